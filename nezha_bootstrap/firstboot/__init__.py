"""First boot: user-data, the systemd unit and the zipapp. The two constants the command line's help
needs live here, so that building the CLI (every command, `run` included) does not load render.py."""

KINDS = ("cloud-init", "cloud-init-minimal", "systemd", "env")  # what `render` writes
USER_DATA_LIMIT = 16384  # EC2's limit on user-data (before base64); other clouds allow as much or more
