# One image carrying telenet and all its twistd apps:
#   twistd -n telepresence-daemon | teleroute | telemount | sftp-agent, and the telenet CLI.
#
#   docker build -t telenet .                                  # Debian bookworm
#   docker build --build-arg BASE=debian:trixie-slim -t telenet .
#
# A builder stage makes the venv with the base's own python3 (pyfuse3 builds from source
# there), so the image fits whatever Python and Debian release the machine building it has.
# scripts/build-image adds two optional inputs under build/: wheels already built for the same
# Python (build/wheels, used before the package index) and the CA bundle the package index is
# reached through (build/pip/ca-certificates.crt, for machines behind a TLS-intercepting proxy).
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
ARG DEBIAN_FRONTEND=noninteractive
# Lets scripts/build-image find the classic builder's untagged images of this stage.
LABEL telenet.stage=build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev gcc pkg-config libfuse3-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# "build*" copies build/ (wheels, pip) when it exists, and nothing otherwise.
COPY pyproject.toml README.md LICENSE build* /src/
# pyfuse3 with telemount's patch, unless build/wheels brought it for this Python.
COPY scripts/pyfuse3 /src/pyfuse3-patch/
# The dependencies (and what builds telenet) first, in a layer of their own: it is rebuilt only
# when pyproject changes.
RUN set -eu; \
    python3 -m venv /opt/telenet; \
    if [ -f /src/pip/ca-certificates.crt ]; then export PIP_CERT=/src/pip/ca-certificates.crt; fi; \
    mkdir -p /src/wheels; \
    bash /src/pyfuse3-patch/wheel /src/wheels /opt/telenet/bin/python; \
    python3 -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb")); print("\n".join(p["project"]["dependencies"] + p["project"]["optional-dependencies"]["telemount"] + p["build-system"]["requires"]))' \
      > /src/requirements.txt; \
    pip="/opt/telenet/bin/pip install --no-cache-dir --disable-pip-version-check"; \
    $pip --no-index --find-links /src/wheels -r /src/requirements.txt 2>/dev/null \
      || $pip --find-links /src/wheels -r /src/requirements.txt
COPY telenet /src/telenet
COPY twisted /src/twisted
RUN /opt/telenet/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
      --no-build-isolation /src \
 && /opt/telenet/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
# python3 runs the venv; iproute2, iptables and nftables are what the daemon needs for
# br-daemon, veth pairs, forwarding and masquerade; fuse3 brings fusermount3 and the FUSE
# library of the release (libfuse3-3 on bookworm, libfuse3-4 on trixie) that pyfuse3 links.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 iproute2 iptables nftables fuse3 ca-certificates procps \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/telenet /opt/telenet
RUN /opt/telenet/bin/twistd --help | grep -q teleroute \
 && /opt/telenet/bin/python -c "import pyfuse3, grpc, pyroute2; assert pyfuse3.FileInfo.cache_readdir"

ENV PATH=/opt/telenet/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["twistd", "--help"]
