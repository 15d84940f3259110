"""Real first-boot tests: a Debian bookworm rootfs booted with systemd-nspawn in a private netns."""
