# nsp-proxy: Azure Network Security Perimeter enforcement in front of local resources (mitmproxy based).
#
#   docker build -t nsp-proxy .
#   docker run --rm nsp-proxy                      # the embedded demo perimeter (listens on 127.0.0.1 only,
#                                                  # so it is reachable from inside the container only)
#
# Your own perimeter: mount a DIRECTORY holding the configuration at /config (read-only is fine) and make its
# listeners bind 0.0.0.0, e.g. `listen: 0.0.0.0:8080` and `settings.metrics: 0.0.0.0:9464`:
#
#   docker run --rm -v "$PWD/config:/config:ro" -p 8080:8080 -p 3128:3128 -p 9464:9464 \
#     nsp-proxy run --config /config/perimeter.yaml
#
# Mount the directory rather than the single file: edits apply live (nsp-proxy polls the file), and editors
# that save by replacing the file would leave a single-file bind mount pointing at the old copy.
# The access log goes to stdout (`docker logs`) unless settings.accessLog or --access-log says otherwise.
#
# As a sidecar (README "Run as a sidecar", deploy/): the same image runs `nsp-proxy sidecar-setup --apply` once
# as root with NET_ADMIN (nftables is installed for it) and then the proxy as the unprivileged user nsp (uid
# 10001, the uid the rules exempt: --proxy-uid 10001).
# The newest tested pair (README, Development): Python 3.13 with mitmproxy 12.3.x.
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# nftables: for `nsp-proxy sidecar-setup --apply` (run as root with NET_ADMIN; the proxy itself never is).
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /tmp/build/
COPY proxy /tmp/build/proxy
COPY addons /tmp/build/addons
RUN pip install /tmp/build 'mitmproxy==12.3.*' \
    && rm -rf /tmp/build

# mitmproxy keeps its CA in ~/.mitmproxy, so the user needs a writable home.
RUN useradd --create-home --uid 10001 --user-group nsp \
    && mkdir /config \
    && chown nsp:nsp /config
USER nsp
WORKDIR /home/nsp

# The demo perimeter's ports: storage 8080, key vault 8081, outbound forward proxy 3128, metrics 9464.
EXPOSE 8080 8081 3128 9464

# Readiness: /healthz on the metrics port answers 200 once the configuration is in force and every listener is
# open (503 with what is missing otherwise). NSP_HEALTHZ points it elsewhere when settings.metrics does.
ENV NSP_HEALTHZ=http://127.0.0.1:9464/healthz
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['NSP_HEALTHZ'], timeout=2)"]

ENTRYPOINT ["nsp-proxy"]
CMD ["run"]
