"""Where a host object goes in the guest (harness.vm.channel): a directory per content,
the file keeping its name, so libbpf names the object and its data maps after the user's
file, and the directories the copy needs are made first."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harness.vm import channel


def test_an_object_keeps_its_file_name_in_a_directory_per_content() -> None:
    obj = Path("/src/res_spin_lock_fail.bpf.o")
    a = channel.object_path_in_guest(obj, hashlib.sha256(b"one").hexdigest())
    b = channel.object_path_in_guest(obj, hashlib.sha256(b"two").hexdigest())
    # libbpf: the object's name is the file name up to its first dot, and its .bss map is
    # called after it ("res_spin.bss"), as a skeleton or bpftool of that file would have it
    assert Path(a).name == Path(b).name == "res_spin_lock_fail.bpf.o"
    assert Path(a).parent != Path(b).parent
    assert a.startswith("/run/kitl/")


class FakeSftp:
    def __init__(self, existing: set[str]) -> None:
        self.existing, self.made = set(existing), list[str]()

    def stat(self, path: str) -> object:
        if path not in self.existing:
            raise FileNotFoundError(path)
        return object()

    def mkdir(self, path: str) -> None:
        self.made.append(path)
        self.existing.add(path)


@pytest.mark.parametrize(
    ("existing", "made"),
    [({"/", "/run"}, ["/run/kitl", "/run/kitl/ab"]), ({"/", "/run", "/run/kitl/ab"}, [])],
)
def test_parents_of_a_copy_are_made_outermost_first(existing: set[str], made: list[str]) -> None:
    sftp = FakeSftp(existing)
    channel._make_parents(sftp, "/run/kitl/ab/x.bpf.o")  # type: ignore[arg-type]
    assert sftp.made == made
