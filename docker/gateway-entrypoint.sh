#!/bin/sh
# Generates the gateway's keys on first start, hands the target CA's public key
# to the VMs (only the public half), then runs the gateway.
set -eu
CONFIG=/etc/jit-gateway/jit-gateway.toml
jit-gateway -c "$CONFIG" ca vm-trust > /dev/null
cp /etc/jit-gateway/certs/target_ca_ed25519_key.pub /trust/target_ca.pub
exec jit-gateway -c "$CONFIG" serve
