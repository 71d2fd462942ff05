"""A booted guest: the accelerator, the virtme-ng launcher and its console, the SSH channel,
guest slots on a loaded host, the boot check, and the host's client of the guest agent."""
