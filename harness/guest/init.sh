#!/bin/sh
# kitl guest init: runs as root inside the virtme-ng guest (via vng --exec).
# Brings up the user-mode NIC, starts sshd with the per-VM keys from $1 and announces
# readiness on the console; then keeps the VM alive until the host tears it down.
# Under TCG every exec costs a noticeable fraction of a second, so this script uses shell
# builtins wherever it can and batches the ip commands.
state=$1
nic=""
find_nic() {
    for d in /sys/class/net/*; do
        n=${d##*/}
        [ "$n" = lo ] && continue
        nic=$n
        return 0
    done
    return 1
}
if ! find_nic; then
    modprobe -q virtio_net 2>/dev/null  # udev normally loaded it already
    for i in 1 2 3 4 5 6 7 8 9 10; do
        find_nic && break
        sleep 0.2
    done
fi
if [ -z "$nic" ]; then
    echo "KITL-FAILED no network interface"
    exit 1
fi
printf 'link set lo up\nlink set %s up\naddr add 10.0.2.15/24 dev %s\n' "$nic" "$nic" | ip -batch -
# virtme-ng masks the host's /etc/shadow; without an entry sshd calls root "locked".
# '*' is a valid, unlockable hash: key login only.
umask 077
printf 'root:*:19000:0:99999:7:::\n' > /run/kitl-shadow
mount --bind /run/kitl-shadow /etc/shadow
# Commands arrive as `sh -c`: give root a plain /bin/sh so no host shell start-up files
# (.bashrc with pyenv/conda hooks) run for every command; under TCG they cost seconds.
umask 022
while IFS= read -r line; do
    case $line in
        root:*) echo "${line%:*}:/bin/sh" ;;
        *) echo "$line" ;;
    esac
done < /etc/passwd > /run/kitl-passwd
mount --bind /run/kitl-passwd /etc/passwd
mkdir -m 0755 -p /run/sshd
# -r: no re-exec per connection (OpenSSH < 9.8; newer ones split off sshd-session instead)
rexec=""
[ -x /usr/lib/openssh/sshd-session ] || rexec=-r
if ! /usr/sbin/sshd $rexec -f "$state/sshd_config" -E /run/kitl-sshd.log; then
    echo "KITL-FAILED sshd: $(cat /run/kitl-sshd.log 2>/dev/null)"
    exit 1
fi
echo "KITL-READY $(uname -r)"
# The host kills QEMU when done; nothing here needs a clean shutdown.
while :; do sleep 3600; done
