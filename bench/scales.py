"""The spools every benchmark uses (deterministic: same seed, same data)."""

from bench.spool import Scale

SMALL = Scale("small", users=20, messages=1000, lmtp=True)
MEDIUM = Scale("medium", users=500, messages=50_000)
LARGE = Scale("large", users=3000, messages=300_000, mix="lean")
VM_SMALL = Scale("vm", users=10, messages=400, lmtp=True)
VM_BIG = Scale("vm-big", users=40, messages=4_000)


def sweep(n_mailboxes, per_mailbox=1):
    """n_mailboxes mailboxes (10 per user, flat), per_mailbox tiny messages each on average."""
    return Scale(
        f"mb{n_mailboxes // 1000}k" + (f"-x{per_mailbox}" if per_mailbox != 1 else ""),
        users=n_mailboxes // 10,
        messages=n_mailboxes * per_mailbox,
        folders=(9, 9),
        flat=True,
        mix="tiny",
    )


ALL = {s.name: s for s in (SMALL, MEDIUM, LARGE, VM_SMALL, VM_BIG)}


def by_name(name):
    if name in ALL:
        return ALL[name]
    if name.startswith("mb"):
        k, _, x = name[2:].partition("-x")
        return sweep(int(k.rstrip("k")) * 1000, int(x) if x else 1)
    raise KeyError(name)
