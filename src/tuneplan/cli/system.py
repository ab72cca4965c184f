"""What the machine has now: memory available to a new allocation (shared by trace --real and probe)."""

from __future__ import annotations

import os


def _ram(meminfo_key: str, sysconf_pages: str) -> int | None:
    """Bytes from /proc/meminfo's `meminfo_key` line (kB), else os.sysconf pages x page size."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(meminfo_key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf(sysconf_pages) * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_ram() -> int | None:
    """Bytes of memory available to a new allocation now (Linux MemAvailable, else free pages)."""
    return _ram("MemAvailable:", "SC_AVPHYS_PAGES")


def total_ram() -> int | None:
    """Bytes of physical memory (Linux MemTotal, else the page count)."""
    return _ram("MemTotal:", "SC_PHYS_PAGES")
