# A demo VM: sshd trusting the gateway's target CA, with a local account "admin".
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends openssh-server rsync \
 && rm -rf /var/lib/apt/lists/* \
 && useradd -m -s /bin/bash admin && usermod -p '*' admin && mkdir -p /run/sshd
COPY docker/vm-entrypoint.sh /usr/local/bin/vm-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/vm-entrypoint.sh"]
