# The whole gateway as one image (README.md, "Deploy"):
#
#   docker build -t gateway .
#   docker run -d --name gateway -p 80:80 -p 443:443 \
#     -v /srv/gateway/gateway.toml:/srv/gateway/gateway.toml:ro \
#     -v /srv/gateway/tenants:/srv/gateway/tenants -v /srv/gateway/certs:/srv/gateway/certs \
#     -v /srv/gateway/state:/srv/gateway/state gateway
#
# Two stages: `build` makes the venv (wheels, caches and setuptools stay behind); the final
# stage has only what runs: Debian's python3, bubblewrap and tini, the venv, and a default config.

FROM debian:bookworm-slim AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY gateway ./gateway
# The venv is made from Debian's /usr/bin/python3, which the final stage has at the same path:
# the venv's symlinks resolve there, and tenant users can read the interpreter. Everything the
# package depends on is pinned by requirements.lock and installed as wheels (no compiler: a
# dependency without a wheel fails the build rather than compiling), and the build fails if
# anything got installed that the lock does not pin. setuptools is removed afterwards; pip stays,
# for upgrading the package in place before `gateway upgrade` (README.md, "Deploy").
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/gateway \
    && /opt/gateway/bin/pip install --only-binary=:all: -c requirements.lock . \
    && /opt/gateway/bin/pip freeze | grep -v '^gateway @' > installed.txt \
    && if grep -vxF -f requirements.lock installed.txt; then \
        echo "^ installed but not pinned in requirements.lock (make lock)"; exit 1; fi \
    && /opt/gateway/bin/pip uninstall --yes --quiet setuptools \
    && /opt/gateway/bin/gateway --version

FROM debian:bookworm-slim
# bubblewrap: the tenant sandbox. tini: PID 1 (forwards SIGTERM/SIGHUP to the gateway, reaps
# orphans). util-linux (prlimit, setpriv) is already in the base image: it is Essential.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 bubblewrap tini ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/dpkg.log /var/log/apt
COPY --from=build /opt/gateway /opt/gateway
# Relative paths in gateway.toml resolve against its folder: tenants/, certs/ and state/ are the
# volumes beside it. Mount your own gateway.toml over this one (README.md, "Deploy").
COPY docker/gateway.toml /srv/gateway/gateway.toml
RUN mkdir -m 0711 /srv/gateway/tenants && mkdir -m 0700 /srv/gateway/certs /srv/gateway/state
ENV PATH=/opt/gateway/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1
WORKDIR /srv/gateway
VOLUME ["/srv/gateway/tenants", "/srv/gateway/certs", "/srv/gateway/state"]
EXPOSE 80 443
# The start period covers the first ACME issuance: HTTPS refuses handshakes until a certificate
# exists, and DNS-01 can take a few minutes to validate.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 CMD ["gateway", "health"]
ENTRYPOINT ["/usr/bin/tini", "--", "gateway"]
CMD ["serve"]
