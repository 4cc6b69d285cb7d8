#!/usr/bin/env bash
# Installs what the end-to-end tests need on a Debian machine, as root.
# Idempotent: installs only what is missing. Package install scripts would start
# services that grab well-known ports, so autostart is blocked first.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have sshd || [ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
have ssh || need_pkgs+=(openssh-client)
have sftp || need_pkgs+=(openssh-client)
have gcc || need_pkgs+=(gcc libc6-dev)
# useradd, userdel, chpasswd: the e2e tests create a throwaway target account.
have useradd || [ -x /usr/sbin/useradd ] || need_pkgs+=(passwd)
# FreeRADIUS (RADIUS client tests); radclient for debugging by hand.
have freeradius || [ -x /usr/sbin/freeradius ] || need_pkgs+=(freeradius)
have radclient || need_pkgs+=(freeradius-utils)
# SoftHSM2: the PKCS#11 key-provider tests run against a real software token.
{ have softhsm2-util && [ -f /usr/lib/softhsm/libsofthsm2.so ]; } || need_pkgs+=(softhsm2)

# pkcs11-tool reads the token's public keys independently of sallyport.
have pkcs11-tool || need_pkgs+=(opensc)
# RabbitMQ: the connector/amqp tests start their own node from these binaries.
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_pkgs+=(rabbitmq-server)
# Password changes through a privileged account run chpasswd under sudo.
have sudo || need_pkgs+=(sudo)
# RDP (internal/rdptest): Xvfb gives the FreeRDP tools a display; freerdp-shadow-cli
# is an NLA target with a SAM file made by winpr-hash; xrdp with xorgxrdp is a TLS
# target that logs Unix accounts in; xfreerdp is the real client.
have Xvfb || need_pkgs+=(xvfb)
have xfreerdp || need_pkgs+=(freerdp2-x11)
have freerdp-shadow-cli || need_pkgs+=(freerdp2-shadow-x11)
have winpr-hash || need_pkgs+=(winpr-utils)
{ have xrdp && have xrdp-sesman; } || need_pkgs+=(xrdp)
[ -f /usr/lib/xorg/modules/drivers/xrdpdev_drv.so ] || need_pkgs+=(xorgxrdp)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "test/setup.sh: missing ${need_pkgs[*]}; run as root to install them" >&2
    exit 1
  fi
  # Block service autostart so installing a server does not bind its ports.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${need_pkgs[@]}"
fi
mkdir -p /run/sshd
echo "test/setup.sh: dependencies present"
