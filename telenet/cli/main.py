# -*- test-case-name: tests.test_cli_main -*-
"""
The ``telenet`` command line: Telepresence's ``--docker`` mode for telenet's plug-ins.

    telenet connect --docker [--name N] [--vif-network NET | --vif IFACE] [--subnet CIDR ...]
                    [--docker-subnet CIDR] [--cluster-dns ADDR] [--cluster-domain D ...]
                    [--namespace NS] [--mapped-namespaces A,B,...]
    telenet status [--name N | --use REGEX] [--multi-daemon] [--output text|json|yaml]
    telenet [--connection N] docker-run [docker run arguments]
    telenet [--connection N] curl [curl arguments] URL
    telenet engage [--name N] --agent HOST:PORT --container NAME [--remote-mount PATH[:ro] ...]
                   [--mount-opt uid=N|gid=N|umask=OCTAL ...]
                   --docker-run -- [docker run arguments]
    telenet engage … --docker-build CONTEXT [--docker-build-opt KEY=VALUE ...] -- [docker run args]
    telenet engage … --docker-debug CONTEXT -- [docker run arguments]
    telenet quit [--name N | --use REGEX]
    telenet compose [-f FILE ...] [--env-file F] [--profile P ...] [--project-name N]
                    [--project-directory D] SUBCOMMAND [ARGS ...]
    telenet demo [--prefix P] [--keep]
    telenet demo-cluster up|down [--prefix P] [--output json]
    telenet config view [--output text|json|yaml]
    telenet version [--output text|json|yaml]
    telenet doctor [--name N] [--output text|json|yaml]
    telenet gather-logs [-o FILE.zip] [--since DURATION] [--anonymize]
    telenet loglevel LEVEL [--duration D] [--name N] [--output text|json|yaml]

Global options (before the command): ``--config FILE``, ``--connection N`` (an exact name),
``--use REGEX`` (the one connection whose name the expression matches, like Telepresence's
``--use``) and ``--format json|yaml``.

Errors are one line on stderr (``telenet <command>: …``) and exit 1; docker-run and engage exit
with the container's code. With ``--format``, stdout carries one object per run: status its
status, the other commands ``{"ok": …, "command": …, …}`` at the end, a failure
``{"error": "<message>"}`` (exit 1; usage errors exit 2), as Telepresence's ``--output json``
puts its errors on stdout; telenet's progress lines go to stderr. The containers of docker-run,
curl and engage keep their own stdout and stderr, so their object follows their output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

# Light on purpose: ``telenet --help`` imports only this, argparse and compose's argument table
# (tests/test_cli_imports.py holds the set). A command's modules are imported when it runs.
from telenet.cli.compose.arguments import add_compose_parser, split_compose

if TYPE_CHECKING:
    from telenet.cli.compose.command import ComposeCommand
    from telenet.cli.config import Config
    from telenet.cli.connector import Connector
    from telenet.cli.runner import WorkloadRunner

COMMANDS = (
    "connect",
    "status",
    "docker-run",
    "curl",
    "engage",
    "quit",
    "compose",
    "demo",
    "demo-cluster",
    "config",
    "version",
    "doctor",
    "gather-logs",
    "loglevel",
)
FORMATS = ("text", "json", "yaml")


class _UsageError(Exception):
    """argparse's error, raised so that ``--format`` can print it as an object."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or the global options' and command ``only``'s (docker-run, curl)."""
    parser = _Parser(
        prog="telenet",
        description="Reach a remote network from Docker containers through a daemon container, "
        "and mount remote directories as Docker volumes.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: ~/.config/telenet/config.yml)",
    )
    parser.add_argument(
        "--connection",
        metavar="N",
        help="the connection docker-run and engage use (default: the only one; "
        "or $TELENET_CONNECTION)",
    )
    parser.add_argument(
        "--use",
        dest="global_use",
        metavar="REGEX",
        help="the one connection whose name REGEX matches (searched, like Telepresence's --use)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="machine-readable output of every command: its object (or "
        '{"error": ...}) on stdout, progress lines on stderr',
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if only is not None:
        commands.add_parser(only, add_help=False)
        return parser

    connect = commands.add_parser("connect", help="start the daemon container and the network")
    connect.add_argument(
        "--docker",
        action="store_true",
        required=True,
        help="run the daemon in a container (the only mode of telenet)",
    )
    connect.add_argument(
        "--name",
        help="connection name (default: <context>-<namespace>-cn "
        "from the kubeconfig, like Telepresence)",
    )
    vif = connect.add_mutually_exclusive_group()
    vif.add_argument(
        "--vif", metavar="IFACE", help="the daemon's interface toward the remote network"
    )
    vif.add_argument(
        "--vif-network",
        metavar="NET",
        help="a Docker network to attach the daemon to as its VIF (found there by its address)",
    )
    connect.add_argument(
        "--subnet",
        action="append",
        default=[],
        metavar="CIDR",
        help="a subnet to route besides those through the VIF (repeatable)",
    )
    connect.add_argument(
        "--docker-subnet",
        metavar="CIDR",
        help="the teleroute network's own subnet (default: docker.subnet, else a free one)",
    )
    connect.add_argument(
        "--cluster-dns", metavar="ADDR", help="DNS server for names under the cluster domains"
    )
    connect.add_argument(
        "--cluster-domain",
        action="append",
        default=[],
        metavar="D",
        help="a domain resolved by --cluster-dns (repeatable; default cluster.local)",
    )
    connect.add_argument(
        "--namespace",
        "-n",
        metavar="NS",
        help="the connected namespace: single-label names resolve as its services "
        "(default: config.yml's cluster.namespace, else the kubeconfig's, else default)",
    )
    connect.add_argument(
        "--mapped-namespaces",
        metavar="A,B,...",
        help="namespaces whose services resolve as name.namespace (default: "
        "config.yml's cluster.mappedNamespaces, else any)",
    )

    status = commands.add_parser("status", help="describe the connection(s)")
    status.add_argument("--name", help="the connection of that exact name")
    status.add_argument("--use", metavar="REGEX", help="the one connection REGEX matches")
    status.add_argument(
        "--multi-daemon",
        action="store_true",
        help='always {"connections": [...]}, even for one connection (json, yaml)',
    )
    status.add_argument(
        "--output", "-o", choices=("text", "json", "yaml"), help="default: text, or --format"
    )

    commands.add_parser("docker-run", help="docker run on the connection's network", add_help=False)

    commands.add_parser(
        "curl",
        help="curl in a short-lived container on the connection's network",
        add_help=False,
    )

    engage = commands.add_parser(
        "engage",
        help="run a container with an agent's directories mounted",
        usage="telenet engage [--name N] --agent HOST:PORT --container NAME "
        "[--remote-mount PATH[:ro] ...] [--mount-opt KEY=VALUE ...] "
        "(--docker-run | --docker-build CONTEXT [--docker-build-opt KEY=VALUE ...] "
        "| --docker-debug CONTEXT) -- [docker run arguments]",
    )
    engage.add_argument("--name")
    engage.add_argument("--use", metavar="REGEX", help="the one connection REGEX matches")
    engage.add_argument(
        "--agent",
        required=True,
        metavar="HOST:PORT",
        help="the agent's SFTP server, as the daemon reaches it",
    )
    engage.add_argument(
        "--container",
        required=True,
        help="the engaged container (its export directory on the agent)",
    )
    engage.add_argument(
        "--remote-mount",
        action="append",
        default=[],
        metavar="PATH[:ro]",
        help="a directory of the container to mount at the same path (repeatable)",
    )
    engage.add_argument(
        "--mount-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="uid=N, gid=N or umask=OCTAL for every remote mount: the owner and mode mask "
        "its files show (repeatable)",
    )
    how = engage.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--docker-run",
        action="store_true",
        help="run the engagement's handler with docker; its arguments follow --",
    )
    how.add_argument(
        "--docker-build",
        metavar="CONTEXT",
        help="build the handler's image from CONTEXT and run it like --docker-run "
        "(an IMAGE argument after -- stands for the built image)",
    )
    how.add_argument(
        "--docker-debug",
        metavar="CONTEXT",
        help="like --docker-build, with --security-opt apparmor=unconfined --cap-add SYS_PTRACE",
    )
    engage.add_argument(
        "--docker-build-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of docker build, as --KEY VALUE (repeatable)",
    )

    quit_ = commands.add_parser("quit", help="stop the daemon and remove the network")
    quit_.add_argument("--name")
    quit_.add_argument("--use", metavar="REGEX", help="the one connection REGEX matches")

    add_compose_parser(commands)

    demo = commands.add_parser("demo", help="the whole story against an embedded demo cluster")
    demo.add_argument(
        "--prefix",
        default="telenet-demo",
        help="name of the connection and prefix of the cluster's objects",
    )
    demo.add_argument(
        "--keep", action="store_true", help="keep the connection and the cluster running afterwards"
    )

    cluster = commands.add_parser("demo-cluster", help="start or remove the demo cluster alone")
    cluster.add_argument("action", choices=("up", "down"))
    cluster.add_argument("--prefix", default="telenet-demo")
    cluster.add_argument(
        "--record",
        action="append",
        default=[],
        metavar="NAME=IP",
        help="one more record of the cluster's DNS (IP self: the cluster's address)",
    )
    cluster.add_argument("--output", "-o", choices=("text", "json"))

    config = commands.add_parser("config", help="the configuration")
    views = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    view = views.add_parser("view", help="each setting, where it came from, files and logs")
    version = commands.add_parser("version", help="the CLI's, daemons' and plug-ins' versions")
    from telenet.cli.diagnoseargs import add_diagnose_parsers

    add_diagnose_parsers(commands)
    for sub in (view, version):
        sub.add_argument(
            "--output", "-o", choices=("text", "json", "yaml"), help="default: text, or --format"
        )
    return parser


def _split(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """
    Arguments for argparse, and the raw docker run arguments (docker-run: all after the
    command; engage: all after the first ``--``; compose: all after its subcommand), which
    argparse must not see.
    """
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        # Global options: --config F, --connection N, --x=y, -h.
        i += 1 if "=" in argv[i] or argv[i] in ("-h", "--help") else 2
    if i >= len(argv):
        return argv, None
    if argv[i] in ("docker-run", "curl"):
        return argv[: i + 1], argv[i + 1 :]
    if argv[i] == "compose":
        return split_compose(argv, i)
    if argv[i] == "engage":
        rest = argv[i + 1 :]
        if "--" in rest:
            cut = rest.index("--")
            return argv[: i + 1] + rest[:cut], rest[cut + 1 :]
        return argv, []
    return argv, None


def _wanted_format(argv: list[str]) -> str:
    """``--format`` among the global options, before argparse has run (for its errors)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        if arg.startswith("--format="):
            value = arg.partition("=")[2]
            return value if value in FORMATS else "text"
        if arg == "--format":
            value = argv[i + 1] if i + 1 < len(argv) else ""
            return value if value in FORMATS else "text"
        i += 1 if "=" in arg or arg in ("-h", "--help") else 2
    return "text"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head, docker_args = _split(argv)
    if head[-1:] in (["docker-run"], ["curl"]) and docker_args == []:
        fmt = _wanted_format(head)
        if fmt != "text":
            _emit({"error": f"telenet {head[-1]}: its arguments are required"}, fmt)
            return 2
    if head[-1:] == ["docker-run"] and docker_args in ([], ["-h"], ["--help"]):
        print(
            "usage: telenet [--connection N] docker-run [docker run arguments]\n\n"
            "docker run on the connection's network, with the daemon as DNS server."
        )
        return 0 if docker_args else 2
    if head[-1:] == ["curl"] and docker_args in ([], ["-h"], ["--help"]):
        print(
            "usage: telenet [--connection N] curl [curl arguments] URL\n\n"
            "curl in a container on the connection's network, with the daemon as DNS server;\n"
            "the image is docker.curlImage of config.yml (default telenet/curl, then "
            "curlimages/curl)."
        )
        return 0 if docker_args else 2
    try:
        args = _parse(head, docker_args)
    except _UsageError as e:
        fmt = _wanted_format(head)
        if fmt == "text":
            argparse.ArgumentParser.error(e.parser, e.message)
        _emit({"error": f"{e.parser.prog}: {e.message}"}, fmt)
        return 2
    out = _Output(args.format)

    def fail(message: str) -> int:
        if out.machine:
            out.emit({"error": message})
        else:
            print(f"telenet {args.command}: {message}", file=sys.stderr, flush=True)
        return 1

    from telenet.cli.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as e:
        return fail(str(e))
    from telenet.cli.connection import CLIError

    try:
        return _dispatch(args, docker_args or [], config, out)
    except CLIError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted")
    except Exception as e:
        if not out.machine:
            raise
        import traceback

        traceback.print_exc()
        return fail(" ".join(str(e).split()) or type(e).__name__)


def _parse(head: list[str], docker_args: list[str] | None) -> argparse.Namespace:
    """docker-run and curl, which have no options, parse without the other commands' parsers
    (whose making costs a run ms); the full parser reports errors, with its usage."""
    if docker_args is not None and head[-1:] in (["docker-run"], ["curl"]):
        try:
            return _parser(head[-1]).parse_args(head)
        except _UsageError:
            pass
    return _parser().parse_args(head)


class _Output:
    """Where a run's output goes: text as before, or (``--format``) one object on stdout."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        self.machine = fmt != "text"

    def say(self, text: str) -> None:
        """A progress line: stdout, or stderr when stdout is for the object."""
        print(text, file=sys.stderr if self.machine else sys.stdout, flush=True)

    def emit(self, data: dict[str, Any]) -> None:
        _emit(data, self.format)


def _emit(data: dict[str, Any], fmt: str) -> None:
    if fmt == "yaml":
        import yaml

        print(yaml.safe_dump(data, sort_keys=False).rstrip(), flush=True)
    else:
        print(json.dumps(data), flush=True)


def _say(text: str) -> None:
    print(text, flush=True)


def make_connector(config: Config, say: Callable[[str], None]) -> Connector:
    """The CLI's Connector (tests replace this to run main against memory fakes)."""
    from telenet.cli.connector import Connector
    from telenet.cli.dockerapi import SDKDocker

    return Connector(SDKDocker(), config, say=say)


def make_runner(connector: Connector, say: Callable[[str], None]) -> WorkloadRunner:
    """The CLI's WorkloadRunner (tests replace this to run main against memory fakes)."""
    from telenet.cli.runner import WorkloadRunner

    return WorkloadRunner(connector, say=say)


def make_compose(connector: Connector, say: Callable[[str], None]) -> ComposeCommand:
    """The CLI's ComposeCommand (tests replace this to run main against fakes)."""
    from telenet.cli.compose.command import ComposeCommand

    return ComposeCommand(connector.docker, connector.lookup, say=say, connector=connector)


def _docker_subnet(flag: str | None) -> str | None:
    """``--docker-subnet``, checked (without it, the connector reads ``docker.subnet``)."""
    from telenet.cli.subnets import check_docker_subnet

    return str(check_docker_subnet(flag)) if flag is not None else None


def _dispatch(
    args: argparse.Namespace, docker_args: list[str], config: Config, out: _Output
) -> int:
    from telenet.cli.connection import CLIError, ConnectRequest, check_namespace
    from telenet.cli.naming import default_connection_name, kube_context

    if args.command == "config":
        from telenet.cli import info as report

        view = report.config_view(config, args.config, args.connection)
        return _show(view, args.output, out, report.format_config_view)
    connector = make_connector(config, out.say)
    if args.command == "version":
        from telenet.cli import info as report

        return _show(report.versions(connector), args.output, out, report.format_versions)
    from telenet.cli.diagnoseargs import DIAGNOSE_COMMANDS

    if args.command in DIAGNOSE_COMMANDS:
        from telenet.cli import diagnose

        return diagnose.run(connector, args, out, _show)
    if args.command == "compose":
        return _compose(connector, args, docker_args, out)
    connection = args.connection or os.environ.get("TELENET_CONNECTION") or None
    use = getattr(args, "use", None) or args.global_use
    if args.command == "connect":
        if use is not None:
            raise CLIError("--use picks an existing connection; connect takes --name")
        from telenet.cli.subnets import check_subnet

        namespace = check_namespace(
            args.namespace or config.namespace or kube_context()[1], "--namespace"
        )
        mapped = tuple(
            check_namespace(n, "--mapped-namespaces")
            for n in (args.mapped_namespaces or "").split(",")
            if n.strip()
        )
        conn = connector.connect(
            ConnectRequest(
                name=args.name or default_connection_name(namespace=namespace),
                vif=args.vif,
                vif_network=args.vif_network,
                subnets=tuple(check_subnet(s) for s in args.subnet),
                cluster_dns=args.cluster_dns,
                cluster_domains=tuple(args.cluster_domain),
                namespace=namespace,
                mapped_namespaces=mapped,
                docker_subnet=_docker_subnet(args.docker_subnet),
            )
        )
        if out.machine:
            from telenet.cli.dockerapi import subnets_of
            from telenet.cli.naming import container_name

            network = conn.network or {}
            out.emit(
                {
                    "ok": True,
                    "command": "connect",
                    "connection": conn.name,
                    "daemon": container_name(conn.name),
                    "network": network.get("Name"),
                    "subnet": next(iter(subnets_of(network)), None) if network else None,
                }
            )
        return 0
    if args.command == "status":
        return _status(connector, args, args.name or (None if use else connection), use, out)
    name = getattr(args, "name", None) or None
    if use is not None and args.command in ("quit", "docker-run", "curl", "engage"):
        if name is not None:
            raise CLIError("give --name or --use, not both")
        connector.check_docker()
        name = connector.select(use)
    name = name or connection
    if args.command == "quit":
        gone = None
        if out.machine:
            from telenet.cli.connection import NotConnected

            connector.check_docker()
            try:
                gone = connector.find(name).name
            except NotConnected:
                pass
        _compose_down_of(connector, name, out)
        connector.quit(name)
        if out.machine:
            out.emit({"ok": True, "command": "quit", "connection": gone})
        return 0
    if args.command in ("docker-run", "curl", "engage"):
        return _run(connector, args, name, docker_args, out)
    from telenet.cli import demo

    if args.command == "demo":
        code = _quietly(
            out, lambda: demo.run_demo(connector, main, prefix=args.prefix, keep=args.keep)
        )
        if out.machine:
            out.emit({"ok": code == 0, "command": "demo", "prefix": args.prefix, "exit_code": code})
        return code
    cluster = demo.DemoCluster(
        connector.docker, args.prefix, config.daemon_image, tuple(args.record)
    )
    connector.check_docker()
    if args.action == "up":
        shape = args.output or out.format
        info = cluster.up(say=_say if shape == "text" else lambda _: None)
        if args.output is None and out.machine:
            out.emit(info)
        else:
            print(_render(info, shape, demo.format_cluster))
    else:
        cluster.down()
        if out.machine:
            out.emit(
                {"ok": True, "command": "demo-cluster", "action": "down", "prefix": args.prefix}
            )
    return 0


def _status(
    connector: Connector,
    args: argparse.Namespace,
    name: str | None,
    use: str | None,
    out: _Output,
) -> int:
    from telenet.cli.connection import NotConnected
    from telenet.cli.status import format_statuses

    shape = args.output or out.format
    try:
        statuses = connector.statuses(name, use)
    except NotConnected as e:
        if shape == "text":
            first = str(e).split(":")[0]
            print(first[:1].upper() + first[1:])
            return 0
        data: dict[str, Any] = {
            "connection": None,
            "daemon": None,
            "network": None,
            "plugins": [],
            "bridges": [],
            "volumes": [],
        }
    else:
        _compose_projects(statuses)
        if shape == "text":
            print(format_statuses(statuses))
            return 0
        data = (
            statuses[0]
            if len(statuses) == 1 and not args.multi_daemon
            else {"connections": statuses}
        )
    if args.output is None:
        out.emit(data)
    else:
        print(_render(data, shape, str))
    return 0


def _run(
    connector: Connector,
    args: argparse.Namespace,
    name: str | None,
    docker_args: list[str],
    out: _Output,
) -> int:
    """docker-run, curl, engage: the container's output is its own; telenet's object follows."""
    from telenet.cli.connection import CLIError
    from telenet.cli.runner import Build

    runner = make_runner(connector, out.say)
    build = None
    if args.command == "engage":
        context = args.docker_build or args.docker_debug
        if context is not None:
            build = Build(context, tuple(args.docker_build_opt), debug=bool(args.docker_debug))
        elif args.docker_build_opt:
            raise CLIError("--docker-build-opt goes with --docker-build or --docker-debug")

    def call() -> int:
        if args.command == "docker-run":
            return runner.docker_run(name, docker_args)
        if args.command == "curl":
            return runner.curl(name, docker_args)
        return runner.engage(
            name,
            args.agent,
            args.container,
            args.remote_mount,
            docker_args,
            build,
            mount_opts=args.mount_opt,
        )

    if not out.machine:
        return call()
    import contextlib
    import io

    run_process = runner.run_process

    def build_output_on_stderr(command: list[str], **kw: Any) -> Any:
        # docker build's progress is telenet's, not the engaged container's.
        if command[1:2] == ["build"]:
            kw.setdefault("stdout", 2)
        return run_process(command, **kw)

    runner.run_process = build_output_on_stderr
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # Only telenet's own lines (the id of a detached container) are Python's; the
        # container's output goes to the inherited descriptors, untouched.
        code = call()
    result: dict[str, Any] = {
        "ok": code == 0,
        "command": args.command,
        "connection": name or _only_connection(connector),
        "exit_code": code,
    }
    if args.command == "engage":
        result["container"] = args.container
    lines = printed.getvalue().split()
    if lines:
        result["container_id"] = lines[-1]
    out.emit(result)
    return code


def _compose(
    connector: Connector, args: argparse.Namespace, compose_args: list[str], out: _Output
) -> int:
    """telenet compose: Compose's output is its own; with --format, telenet's object follows."""
    from telenet.cli.compose.project import ComposeOptions
    from telenet.cli.connection import CLIError

    if args.subcommand is None:
        raise CLIError("a subcommand is required (telenet compose --help lists them)")
    options = ComposeOptions(
        files=tuple(args.files),
        env_files=tuple(args.env_files),
        profiles=tuple(args.profiles),
        project_name=args.project_name,
        project_directory=args.project_directory,
    )
    code = make_compose(connector, out.say).main(options, args.subcommand, compose_args)
    if out.machine:
        out.emit(
            {
                "ok": code == 0,
                "command": "compose",
                "subcommand": args.subcommand,
                "exit_code": code,
            }
        )
    return code


def _compose_down_of(connector: Connector, name: str | None, out: _Output) -> None:
    """``telenet quit``: ``compose down`` first for the compose projects of the connection."""
    from telenet.cli.connection import NotConnected

    connector.check_docker()
    try:
        found = connector.find(name).name
    except NotConnected:
        return
    _quietly(out, lambda: len(make_compose(connector, out.say).down_projects_of(found)))


def _compose_projects(statuses: list[dict[str, Any]]) -> None:
    """``telenet status``: each connection's compose projects (``compose_projects``)."""
    from telenet.cli.compose.state import StateStore, private_root

    store = StateStore(private_root(os.environ))
    for status in statuses:
        status["compose_projects"] = store.projects_of(status["connection"])


def _only_connection(connector: Connector) -> str | None:
    names = connector.connection_names()
    return names[0] if len(names) == 1 else None


def _quietly(out: _Output, call: Callable[[], int]) -> int:
    """``call()`` with Python's prints on stderr when stdout is for the object."""
    if not out.machine:
        return call()
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        return call()


def _show(
    data: dict[str, Any], output: str | None, out: _Output, text: Callable[[dict[str, Any]], str]
) -> int:
    """A report command's data: --output's shape, else --format's object, else text."""
    if output is None and out.machine:
        out.emit(data)
    else:
        print(_render(data, output or "text", text))
    return 0


def _render(data: dict[str, Any], output: str, text: Callable[[dict[str, Any]], str]) -> str:
    if output == "json":
        return json.dumps(data, indent=2)
    if output == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False).rstrip()
    return text(data)


if __name__ == "__main__":
    sys.exit(main())
