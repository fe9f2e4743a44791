"""Peak resident memory of this process, for the bench peers (imported by the scripts next to it)."""


def peak_rss_mb():
    """This process's peak resident memory in MB. Not getrusage's ru_maxrss: Linux carries that
    across exec, so a peer started by webguard would report webguard's peak as its own."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")
