"""CPU accounting the benchmarks share: how busy the whole machine was, and how much of that was our children."""
import os
import pathlib
import resource


def machine_busy_s():
    """CPU seconds the whole machine has spent busy (from /proc/stat)."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_s():
    """CPU seconds this process's finished children have used."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
