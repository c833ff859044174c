# One image carrying telenet and all its twistd apps:
#   twistd -n telepresence-daemon | teleroute | telemount | sftp-agent, and the telenet CLI.
#
# Build with scripts/build-image (it builds the Python wheels on the host first, then runs
# `docker build`). By hand:
#   pip wheel --wheel-dir build/wheels .     # telenet and every dependency, as wheels
#   docker build -t telenet .
# With wheels in build/wheels the image installs only from them (no network needed for Python
# packages); without, it builds from source against the package index, which needs a compiler
# for pyfuse3 and working TLS from inside the build.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
# python3 from Debian runs the venv; iproute2, iptables and nftables are what the daemon needs
# for br-daemon, veth pairs, forwarding and masquerade; fuse3 is telemount's fusermount3.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv iproute2 iptables nftables fuse3 libfuse3-3 ca-certificates procps \
 && rm -rf /var/lib/apt/lists/*

# "build*" copies build/wheels to /tmp/telenet-src/wheels when it exists, and nothing otherwise.
COPY pyproject.toml README.md build* /tmp/telenet-src/
COPY telenet /tmp/telenet-src/telenet
COPY twisted /tmp/telenet-src/twisted
RUN set -eu; \
    python3 -m venv /opt/telenet; \
    if ls /tmp/telenet-src/wheels/telenet-*.whl >/dev/null 2>&1; then \
      /opt/telenet/bin/pip install --no-cache-dir --no-index \
        --find-links /tmp/telenet-src/wheels telenet; \
    else \
      apt-get update; \
      apt-get install -y --no-install-recommends gcc python3-dev pkg-config libfuse3-dev; \
      /opt/telenet/bin/pip install --no-cache-dir /tmp/telenet-src; \
      apt-get purge -y --auto-remove gcc python3-dev pkg-config libfuse3-dev; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    rm -rf /tmp/telenet-src; \
    /opt/telenet/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"; \
    /opt/telenet/bin/twistd --help | grep -q teleroute

ENV PATH=/opt/telenet/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["twistd", "--help"]
