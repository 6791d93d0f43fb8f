# pgpilot in a container: built from this repository, run as an unprivileged user.
#   docker build -t pgpilot .
#   docker run -p 6432:6432 -p 9930:9930 -v /etc/pgpilot:/etc/pgpilot:ro pgpilot
# The config must listen on 0.0.0.0 (server.listen, metrics.listen) to be reachable from
# outside the container. Many container runtimes' default seccomp profiles refuse io_uring:
# pgpilot then runs on epoll and says so at startup (see the README's "Deployment").
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p pgpilot

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --uid 10001 pgpilot
COPY --from=build /src/target/release/pgpilot /usr/local/bin/pgpilot
COPY config/event-webhook.sh /usr/local/bin/pgpilot-event-webhook
USER 10001
# Freed memory goes back to the kernel at once (as the systemd unit sets it).
ENV MIMALLOC_PURGE_DELAY=0
EXPOSE 6432 9930
ENTRYPOINT ["/usr/local/bin/pgpilot"]
CMD ["--config", "/etc/pgpilot/pgpilot.toml"]
