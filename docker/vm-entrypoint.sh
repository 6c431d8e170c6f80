#!/bin/sh
set -eu
while [ ! -s /trust/target_ca.pub ]; do echo "waiting for the gateway's target CA"; sleep 1; done
ssh-keygen -A
exec /usr/sbin/sshd -D -e -p 2201 -o ListenAddress=127.0.0.1 \
  -o TrustedUserCAKeys=/trust/target_ca.pub -o AuthorizedKeysFile=none \
  -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no
