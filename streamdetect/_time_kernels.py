"""Compiled parsing of the canonical timestamps, ``YYYY-MM-DDTHH:MM:SS.fffZ`` (JavaScript's
``toISOString``, and :func:`streamdetect.alerts.format_time`) and the same with an offset
(``.fff+01:00``), or to the second (``:SSZ``, ``:SS+01:00``), for a whole batch of events in one
loop over their bytes.

Anything else, and any string of those shapes that is not a valid time (an impossible date or
offset, a leap second), is flagged, not guessed: the caller reads it with the full parser.
"""

from __future__ import annotations

import numpy as np

from streamdetect._jit import compiled

ZULU_LEN = 24
OFFSET_LEN = 29
_FRACTION = 4  # ".fff"
_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


@compiled(nrt=False)
def _two(buf, i):
    """The number the two ASCII digits at ``i`` write, or -1."""
    a, b = int(buf[i]), int(buf[i + 1])
    if a < 48 or a > 57 or b < 48 or b > 57:
        return -1
    return (a - 48) * 10 + (b - 48)


@compiled(nrt=False)
def parse_canonical(buf, starts, lengths, ms, ok):
    """Epoch ms (``ms``) of the strings at ``starts`` (of ``lengths`` bytes) in ``buf`` (uint8),
    and which were canonical and valid (``ok``).

    >>> s = "2024-02-29T23:59:59.999Z2024-03-01T00:59:59.999+01:002023-02-29T00:00:00.000Z2024-03-01T00:59:59+01:00"
    >>> ms, ok = np.zeros(4, dtype=np.int64), np.zeros(4, dtype=bool)
    >>> parse_canonical(np.frombuffer(s.encode(), dtype=np.uint8), np.array([0, 24, 53, 77]),
    ...                 np.array([24, 29, 24, 25]), ms, ok)
    >>> ms.tolist()[:2], ms[3].item() == 1709251199000, ok.tolist()
    ([1709251199999, 1709251199999], True, [True, True, False, True])
    """
    for r in range(len(starts)):
        ok[r] = False
        ms[r] = 0
        s, n = starts[r], lengths[r]
        # With milliseconds (".fff") or without, then "Z" or "+01:00".
        if n in (ZULU_LEN, OFFSET_LEN):
            zone = s + 19 + _FRACTION
        elif n in (ZULU_LEN - _FRACTION, OFFSET_LEN - _FRACTION):
            zone = s + 19
        else:
            continue
        if not (buf[s + 4] == 45 and buf[s + 7] == 45 and buf[s + 10] == 84 and buf[s + 13] == 58
                and buf[s + 16] == 58):  # "-", "-", "T", ":", ":"  # fmt: skip
            continue
        bad = False
        for k in _DIGITS:
            c = int(buf[s + k])
            if c < 48 or c > 57:
                bad = True
        milli = 0
        if zone > s + 19:
            if buf[s + 19] != 46:  # "."
                continue
            for k in range(s + 20, s + 23):
                c = int(buf[k])
                if c < 48 or c > 57:
                    bad = True
                milli = milli * 10 + c - 48
        if bad:
            continue
        year = _two(buf, s) * 100 + _two(buf, s + 2)
        month, day = _two(buf, s + 5), _two(buf, s + 8)
        hour, minute, second = _two(buf, s + 11), _two(buf, s + 14), _two(buf, s + 17)
        if year < 1 or month < 1 or month > 12 or hour > 23 or minute > 59 or second > 59:
            continue
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        if day < 1 or day > _DAYS_IN_MONTH[month] + (1 if month == 2 and leap else 0):
            continue
        east = 0
        if s + n - zone == 1:
            if buf[zone] != 90:  # "Z"
                continue
        else:
            sign = buf[zone]
            hours, minutes = _two(buf, zone + 1), _two(buf, zone + 4)
            if (sign != 43 and sign != 45) or buf[zone + 3] != 58 or hours < 0 or minutes < 0:
                continue
            if hours > 23 or minutes > 59:
                continue
            east = (hours * 3_600_000 + minutes * 60_000) * (-1 if sign == 45 else 1)
        # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
        y = year - (1 if month <= 2 else 0)
        era = y // 400
        yoe = y - era * 400
        doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
        days = era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468
        ms[r] = days * 86_400_000 + hour * 3_600_000 + minute * 60_000 + second * 1000 + milli - east
        ok[r] = True
