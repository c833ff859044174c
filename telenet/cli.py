# -*- test-case-name: tests.test_cli_main -*-
"""
The ``telenet`` command line: Telepresence's ``--docker`` mode for telenet's plug-ins.

    telenet connect --docker [--name N] [--vif-network NET | --vif IFACE] [--subnet CIDR ...]
                    [--cluster-dns ADDR] [--cluster-domain D ...]
    telenet status [--name N] [--output text|json|yaml]
    telenet [--connection N] docker-run [docker run arguments]
    telenet [--connection N] curl [curl arguments] URL
    telenet engage [--name N] --agent HOST:PORT --container NAME [--remote-mount PATH[:ro] ...]
                   --docker-run -- [docker run arguments]
    telenet engage … --docker-build CONTEXT [--docker-build-opt KEY=VALUE ...] -- [docker run args]
    telenet engage … --docker-debug CONTEXT -- [docker run arguments]
    telenet quit [--name N]
    telenet demo [--prefix P] [--keep]
    telenet demo-cluster up|down [--prefix P] [--output json]

Errors are one line on stderr (``telenet <command>: …``) and exit 1; docker-run and engage exit
with the container's code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import yaml

from telenet.cliconfig import Config, ConfigError, load_config

COMMANDS = ("connect", "status", "docker-run", "curl", "engage", "quit", "demo", "demo-cluster")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
        help="a Docker network to attach the daemon to as its VIF (eth1)",
    )
    connect.add_argument(
        "--subnet",
        action="append",
        default=[],
        metavar="CIDR",
        help="a subnet to route besides those through the VIF (repeatable)",
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

    status = commands.add_parser("status", help="describe the connection")
    status.add_argument("--name")
    status.add_argument("--output", "-o", choices=("text", "json", "yaml"), default="text")

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
        "[--remote-mount PATH[:ro] ...] (--docker-run | --docker-build CONTEXT "
        "[--docker-build-opt KEY=VALUE ...] | --docker-debug CONTEXT) -- [docker run arguments]",
    )
    engage.add_argument("--name")
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
    cluster.add_argument("--output", "-o", choices=("text", "json"), default="text")
    return parser


def _split(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """
    Arguments for argparse, and the raw docker run arguments (docker-run: all after the
    command; engage: all after the first ``--``), which argparse must not see.
    """
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        # Global options: --config F, --connection N, --x=y, -h.
        i += 1 if "=" in argv[i] or argv[i] in ("-h", "--help") else 2
    if i >= len(argv):
        return argv, None
    if argv[i] in ("docker-run", "curl"):
        return argv[: i + 1], argv[i + 1 :]
    if argv[i] == "engage":
        rest = argv[i + 1 :]
        if "--" in rest:
            cut = rest.index("--")
            return argv[: i + 1] + rest[:cut], rest[cut + 1 :]
        return argv, []
    return argv, None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head, docker_args = _split(argv)
    parser = _parser()
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
    args = parser.parse_args(head)

    def fail(message: str) -> int:
        print(f"telenet {args.command}: {message}", file=sys.stderr, flush=True)
        return 1

    try:
        config = load_config(args.config)
    except ConfigError as e:
        return fail(str(e))
    from telenet.connection import CLIError

    try:
        return _dispatch(args, docker_args or [], config)
    except CLIError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted")


def _say(text: str) -> None:
    print(text, flush=True)


def _dispatch(args: argparse.Namespace, docker_args: list[str], config: Config) -> int:
    from telenet.connection import Connector, ConnectRequest, check_subnet, default_connection_name
    from telenet.dockerapi import SDKDocker

    connector = Connector(SDKDocker(), config, say=_say)
    connection = args.connection or os.environ.get("TELENET_CONNECTION") or None
    if args.command == "connect":
        connector.connect(
            ConnectRequest(
                name=args.name or default_connection_name(),
                vif=args.vif,
                vif_network=args.vif_network,
                subnets=tuple(check_subnet(s) for s in args.subnet),
                cluster_dns=args.cluster_dns,
                cluster_domains=tuple(args.cluster_domain),
            )
        )
        return 0
    if args.command == "status":
        from telenet.connection import NotConnected, format_status

        try:
            status = connector.status(args.name or connection)
        except NotConnected as e:
            if args.output == "text":
                print(str(e).split(":")[0].capitalize())
                return 0
            status = {
                "connection": None,
                "daemon": None,
                "network": None,
                "plugins": [],
                "bridges": [],
                "volumes": [],
            }
        print(_render(status, args.output, format_status))
        return 0
    if args.command == "quit":
        connector.quit(args.name or connection)
        return 0
    if args.command in ("docker-run", "curl", "engage"):
        from telenet.connection import CLIError
        from telenet.runner import Build, Runner

        runner = Runner(connector, say=_say)
        if args.command == "docker-run":
            return runner.docker_run(connection, docker_args)
        if args.command == "curl":
            return runner.curl(connection, docker_args)
        build = None
        context = args.docker_build or args.docker_debug
        if context is not None:
            build = Build(context, tuple(args.docker_build_opt), debug=bool(args.docker_debug))
        elif args.docker_build_opt:
            raise CLIError("--docker-build-opt goes with --docker-build or --docker-debug")
        return runner.engage(
            args.name or connection,
            args.agent,
            args.container,
            args.remote_mount,
            docker_args,
            build,
        )
    from telenet import demo

    if args.command == "demo":
        return demo.run_demo(connector, prefix=args.prefix, keep=args.keep, telenet=main)
    cluster = demo.DemoCluster(connector.docker, args.prefix, config.daemon_image)
    if args.action == "up":
        connector.check_docker()
        info = cluster.up(say=_say if args.output == "text" else lambda _: None)
        print(_render(info, args.output, demo.format_cluster))
    else:
        connector.check_docker()
        cluster.down()
    return 0


def _render(data: dict[str, Any], output: str, text: Callable[[dict[str, Any]], str]) -> str:
    if output == "json":
        return json.dumps(data, indent=2)
    if output == "yaml":
        return yaml.safe_dump(data, sort_keys=False).rstrip()
    return text(data)


if __name__ == "__main__":
    sys.exit(main())
