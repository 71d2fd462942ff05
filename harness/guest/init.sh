#!/bin/sh
# kitl guest init: runs as root inside the virtme-ng guest (via vng --exec).
# Brings up the user-mode NIC, starts sshd with the per-run keys from $1 and announces
# readiness on the console; then keeps the VM alive until the host tears it down.
state=$1
ip link set lo up
modprobe -q virtio_net 2>/dev/null
nic=""
for i in 1 2 3 4 5 6 7 8 9 10; do
    for d in /sys/class/net/*; do
        n=${d##*/}
        [ "$n" = lo ] && continue
        nic=$n
        break
    done
    [ -n "$nic" ] && break
    sleep 0.2
done
if [ -z "$nic" ]; then
    echo "KITL-FAILED no network interface"
    exit 1
fi
ip link set "$nic" up
ip addr add 10.0.2.15/24 dev "$nic"
# virtme-ng masks the host's /etc/shadow; without an entry sshd calls root "locked".
# '*' is a valid, unlockable hash: key login only.
printf 'root:*:19000:0:99999:7:::\n' > /run/kitl-shadow
chmod 0600 /run/kitl-shadow
mount --bind /run/kitl-shadow /etc/shadow
# Commands arrive as `sh -c`: give root a plain /bin/sh so no host shell start-up files
# (.bashrc with pyenv/conda hooks) run for every command; under TCG they cost seconds.
sed 's#^\(root:[^:]*:[^:]*:[^:]*:[^:]*:[^:]*\):.*$#\1:/bin/sh#' /etc/passwd > /run/kitl-passwd
mount --bind /run/kitl-passwd /etc/passwd
mkdir -p /run/sshd /root/.ssh
chmod 0755 /run/sshd
if ! /usr/sbin/sshd -f "$state/sshd_config" -E /run/kitl-sshd.log; then
    echo "KITL-FAILED sshd: $(cat /run/kitl-sshd.log 2>/dev/null)"
    exit 1
fi
echo "KITL-READY $(uname -r)"
# The host kills QEMU when done; nothing here needs a clean shutdown.
while :; do sleep 3600; done
