"""What kitl knows about BPF itself, pure and stdlib-only: program types and their return
codes, ELF objects and BTF, the verifier's log, helper names, the causes of a failed load,
packets."""
