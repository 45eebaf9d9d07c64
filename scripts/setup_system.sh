#!/usr/bin/env bash
# System packages the client tests need: Orthanc + its DICOMweb plugin (a real PACS on loopback) and
# Debian's Chromium (driven by Playwright; Playwright's own browser download cannot work offline), and
# HAProxy (the balancer in front of several replicas: scripts/replicas.sh, docs/deploy.md).
# Idempotent: packages already present are not reinstalled; apt-get update runs at most once.
#
#   scripts/setup_system.sh          # needs root (or sudo) for apt-get
set -euo pipefail
want=()
{ [ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1; } || want+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1 || want+=(orthanc-dicomweb)
command -v chromium >/dev/null 2>&1 || want+=(chromium)
{ [ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1; } || want+=(haproxy)
# a font, so the screenshots show text (chromium itself only depends on fontconfig)
ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1 || want+=(fonts-dejavu-core)
if [ ${#want[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup_system: need root or sudo to apt-get install ${want[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  echo "setup_system: installing ${want[*]}"
  $SUDO apt-get update -qq
  # Orthanc's package starts a service on install where an init system runs; the tests start their own
  # instance on a free loopback port with their own config, so that one is not used.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}"
fi
echo "setup_system: Orthanc $(/usr/sbin/Orthanc --version 2>/dev/null | head -1 | awk '{print $NF}'), $(chromium --version 2>/dev/null), $(/usr/sbin/haproxy -v 2>/dev/null | head -1 | awk '{print "HAProxy", $3}')"
