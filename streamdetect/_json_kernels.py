"""Compiled reading of flat JSON objects into columns, and interning of the strings they hold.

msgspec decodes an event in about half a microsecond, but what it builds is an object per event
whose fields Python then takes out one by one, checks and converts: three times the decode
itself. :func:`scan_objects` reads a whole batch's bytes in one loop and writes the fields the
rules read straight into arrays (a kind, a number, a string's place in the bytes).

It takes only what it can read exactly as msgspec would, and leaves every other value to
msgspec: the whole value must be one JSON object (objects and arrays within it at most
``_MAX_DEPTH`` deep), its text UTF-8 as Python's strict decoder reads it, its ``\\u`` escapes
paired as UTF-16 surrogates must be, with no field the rules read twice; nor does it take an
event with a field read whose value it cannot take as written (a number with more digits than
a double holds or an exponent beyond 10^22, a string with an escape, an object or an array). Its
grammar is JSON's (RFC 8259), checked for every byte, the fields not read included.

:func:`intern_spans` gives each distinct string (a key, a SKU) a small id that lasts across
batches, so Python looks at a string once, not once per event.
"""

from __future__ import annotations

import numpy as np

from streamdetect._jit import compiled

# What a field of a taken value held.
ABSENT, NULL, FALSE, TRUE, INT, FLOAT, STRING, INEXACT = range(8)
_MAX_DEPTH = 62  # objects and arrays within each other that the scanner follows (bits of an int64)

# Doubles that are powers of ten exactly (10^22 is the largest): a number of at most 15 digits
# scaled by one of them is one correctly rounded operation, what a full parser computes too
# (W. D. Clinger, "How to read floating point numbers accurately", 1990: the fast path).
_POW10 = np.array([10.0**k for k in range(23)])
_MAX_FAST_DIGITS = 15  # below 2**53: the digits as an integer are a double exactly
_MAX_INT_DIGITS = 18  # below 2**63: an int64 exactly

_SPACE = np.array([c in b" \t\n\r" for c in range(256)])  # JSON's whitespace
# The bytes a string's text holds as they are: ASCII from the space up (DEL too), but the quote and the backslash.
_ORDINARY = np.array([32 <= c < 128 and c != 34 and c != 92 for c in range(256)])

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@compiled(inline=True, nrt=False)
def _skip_space(buf, i, end):
    """The first index from ``i`` that is not JSON whitespace."""
    while i < end and _SPACE[buf[i]]:
        i += 1
    return i


@compiled(inline=True, nrt=False)
def _continued(buf, i, end, count, low, high):
    """Whether ``count`` UTF-8 continuation bytes follow at ``i``, the first in ``[low, high]``."""
    if i + count > end or not low <= buf[i] <= high:
        return False
    for k in range(i + 1, i + count):  # noqa: SIM110 (numba compiles no all() of a generator)
        if not 0x80 <= buf[k] <= 0xBF:
            return False
    return True


@compiled(inline=True, nrt=False)
def _utf8_length(buf, i, end):
    """The length of the UTF-8 sequence of a character beyond ASCII at ``i``, or 0 where the
    bytes are not UTF-8 as Python's strict decoder reads it (no overlong forms, no surrogates,
    nothing beyond U+10FFFF)."""
    c = buf[i]
    if 0xC2 <= c <= 0xDF:
        return 2 if _continued(buf, i + 1, end, 1, 0x80, 0xBF) else 0
    if c == 0xE0:
        return 3 if _continued(buf, i + 1, end, 2, 0xA0, 0xBF) else 0
    if c == 0xED:
        return 3 if _continued(buf, i + 1, end, 2, 0x80, 0x9F) else 0
    if 0xE1 <= c <= 0xEF:
        return 3 if _continued(buf, i + 1, end, 2, 0x80, 0xBF) else 0
    if c == 0xF0:
        return 4 if _continued(buf, i + 1, end, 3, 0x90, 0xBF) else 0
    if 0xF1 <= c <= 0xF3:
        return 4 if _continued(buf, i + 1, end, 3, 0x80, 0xBF) else 0
    if c == 0xF4:
        return 4 if _continued(buf, i + 1, end, 3, 0x80, 0x8F) else 0
    return 0


@compiled(inline=True, nrt=False)
def _hex4(buf, i, end):
    """The number the four hexadecimal digits at ``i`` write, or -1."""
    if i + 4 > end:
        return -1
    code = 0
    for k in range(i, i + 4):
        c = buf[k]
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            return -1
        code = code * 16 + d
    return code


@compiled(inline=True, nrt=False)
def _unicode_escape_end(buf, i, end):
    """The index after the ``\\uXXXX`` escape at ``i`` (with its low surrogate after a high one),
    or -1: a lone surrogate is invalid JSON to msgspec."""
    code = _hex4(buf, i + 2, end)
    if code < 0 or 0xDC00 <= code <= 0xDFFF:
        return -1
    if code < 0xD800 or code > 0xDBFF:
        return i + 6
    if i + 12 > end or buf[i + 6] != 92 or buf[i + 7] != 117:
        return -1
    low = _hex4(buf, i + 8, end)
    return i + 12 if 0xDC00 <= low <= 0xDFFF else -1


@compiled(inline=True, nrt=False)
def _string_end(buf, i, end):
    """``(index of the closing quote, whether the text is its bytes)`` of the string whose text
    starts at ``i``: -1 for one this scanner leaves (a control character, bytes that are not
    UTF-8, an escape that is none, a lone surrogate) or one not closed. A text with an escape is
    valid JSON but not its bytes."""
    plain = True
    while i < end:
        while i < end and _ORDINARY[buf[i]]:
            i += 1
        if i >= end:
            break
        c = buf[i]
        if c == 34:  # '"'
            return i, plain
        if c == 92:  # '\\'
            if i + 1 >= end:
                return -1, False
            e = buf[i + 1]
            plain = False
            if e == 117:  # 'u'
                i = _unicode_escape_end(buf, i, end)
                if i < 0:
                    return -1, False
            elif e != 34 and e != 92 and e != 47 and e != 98 and e != 102 and e != 110 and e != 114 and e != 116:
                return -1, False  # not an escape
            else:
                i += 2
        elif c < 32:
            return -1, False
        elif c < 128:
            i += 1
        else:
            n = _utf8_length(buf, i, end)
            if n == 0:
                return -1, False
            i += n
    return -1, False


@compiled(inline=True, nrt=False)
def _digits(buf, i, end):
    """The index after the run of digits at ``i``."""
    while i < end and 48 <= buf[i] <= 57:
        i += 1
    return i


@compiled(inline=True, nrt=False)
def _number(buf, i, end):
    """The JSON number at ``i``: ``(index after it or -1, kind, value as a double, as an int)``.

    ``kind`` is INT (no fraction, no exponent; msgspec gives a Python int), FLOAT, or INEXACT
    when the value cannot be computed here exactly (the event is then not taken).
    """
    negative = i < end and buf[i] == 45  # '-'
    if negative:
        i += 1
    if i >= end or not 48 <= buf[i] <= 57:
        return -1, INEXACT, 0.0, 0
    first = i
    if buf[i] == 48:  # a leading zero stands alone
        i += 1
    else:
        i = _digits(buf, i, end)
    whole_end = i
    frac_start = frac_end = i
    if i < end and buf[i] == 46:  # '.'
        frac_start = i + 1
        frac_end = _digits(buf, frac_start, end)
        if frac_end == frac_start:
            return -1, INEXACT, 0.0, 0
        i = frac_end
    exponent = 0
    has_exponent = False
    if i < end and (buf[i] == 101 or buf[i] == 69):  # 'e', 'E'
        has_exponent = True
        i += 1
        exp_negative = False
        if i < end and (buf[i] == 43 or buf[i] == 45):
            exp_negative = buf[i] == 45
            i += 1
        exp_end = _digits(buf, i, end)
        if exp_end == i:
            return -1, INEXACT, 0.0, 0
        for k in range(i, exp_end):
            if exponent < 100_000:
                exponent = exponent * 10 + int(buf[k]) - 48
        if exp_negative:
            exponent = -exponent
        i = exp_end
    # The significant digits as one integer (leading zeros are not significant).
    mantissa = 0
    significant = 0
    for k in range(first, frac_end):
        if k == whole_end:
            continue  # the '.'
        d = int(buf[k]) - 48
        if significant == 0 and d == 0:
            continue
        significant += 1
        if significant <= _MAX_INT_DIGITS:
            mantissa = mantissa * 10 + d
    if frac_start == whole_end and not has_exponent:  # an integer
        if significant > _MAX_INT_DIGITS:
            return i, INEXACT, 0.0, 0
        value = -mantissa if negative else mantissa
        return i, INT, float(value), value
    if significant > _MAX_FAST_DIGITS:
        return i, INEXACT, 0.0, 0
    scale = exponent - (frac_end - frac_start)
    if mantissa == 0:
        x = 0.0
    elif scale >= 0:
        if scale > 22:
            return i, INEXACT, 0.0, 0
        x = float(mantissa) * _POW10[scale]
    else:
        if scale < -22:
            return i, INEXACT, 0.0, 0
        x = float(mantissa) / _POW10[-scale]
    return i, FLOAT, -x if negative else x, 0


SLOTS = 64  # the names' table: a name's slot from its length and its first and last bytes
SHARED = -2  # a slot of two names or more: they are compared one by one


@compiled(inline=True, nrt=False)
def _slot(n, first, last):
    return (n * 31 + first * 7 + last) & (SLOTS - 1)


def name_slots(names: list[bytes]) -> np.ndarray:
    """The table :func:`scan_objects` finds the fields read in: for each slot the index of the
    one name in it, -1 for none, :data:`SHARED` for several.

    >>> table = name_slots([b"ts", b"sku"])
    >>> sorted(table[table != -1].tolist())
    [0, 1]
    """
    table = np.full(SLOTS, -1, dtype=np.int64)
    for f, name in enumerate(names):
        slot = _slot(len(name), name[0], name[-1]) if name else 0
        table[slot] = f if table[slot] == -1 else SHARED
    return table


@compiled(inline=True, nrt=False)
def _same_bytes(a, sa, b, sb, n):
    for k in range(n):  # noqa: SIM110 (numba compiles no all() of a generator)
        if a[sa + k] != b[sb + k]:
            return False
    return True


@compiled(inline=True, nrt=False)
def _field_of(buf, s, n, names, name_starts, name_lengths, slots):
    """Which of the names the key at ``buf[s : s + n]`` is, or -1."""
    f = slots[_slot(n, buf[s], buf[s + n - 1]) if n > 0 else 0]
    if f == -1:
        return -1
    if f >= 0:
        return f if name_lengths[f] == n and _same_bytes(buf, s, names, name_starts[f], n) else -1
    for f in range(len(name_starts)):
        if name_lengths[f] == n and _same_bytes(buf, s, names, name_starts[f], n):
            return f
    return -1


@compiled(inline=True, nrt=False)
def _literal_end(buf, i, end):
    """``(index after it, kind)`` of the ``null``, ``true`` or ``false`` at ``i``; -1 if none."""
    c = buf[i]
    if c == 110 and i + 4 <= end and buf[i + 1] == 117 and buf[i + 2] == 108 and buf[i + 3] == 108:
        return i + 4, NULL
    if c == 116 and i + 4 <= end and buf[i + 1] == 114 and buf[i + 2] == 117 and buf[i + 3] == 101:
        return i + 4, TRUE
    if c == 102 and i + 5 <= end and buf[i + 1] == 97 and buf[i + 2] == 108 and buf[i + 3] == 115 \
            and buf[i + 4] == 101:  # fmt: skip
        return i + 5, FALSE
    return -1, ABSENT


@compiled(inline=True, nrt=False)
def _member_value(buf, i, end):
    """The index after ``"name":`` at ``i`` in an object, or -1."""
    if i >= end or buf[i] != 34:
        return -1
    name_end = _string_end(buf, i + 1, end)[0]
    if name_end < 0:
        return -1
    i = _skip_space(buf, name_end + 1, end)
    return i + 1 if i < end and buf[i] == 58 else -1  # ':'


@compiled(nrt=False)
def _nested_end(buf, i, end):
    """The index after the object or array at ``i``, checked as JSON, or -1 (not JSON, or
    deeper than ``_MAX_DEPTH``)."""
    objects = np.int64(0)  # bit d: the container at depth d is an object
    depth = 0
    expect_value = True  # at i: a value (after '[', ',' in an array, ':'), else what follows one
    while True:
        i = _skip_space(buf, i, end)
        if i >= end:
            return -1
        c = buf[i]
        if expect_value:
            if c == 123 or c == 91:  # '{', '['
                if depth == _MAX_DEPTH:
                    return -1
                is_object = c == 123
                objects = (objects | (np.int64(1) << depth)) if is_object else (objects & ~(np.int64(1) << depth))
                depth += 1
                i = _skip_space(buf, i + 1, end)
                if i < end and buf[i] == (125 if is_object else 93):  # empty
                    depth -= 1
                    i += 1
                    expect_value = False
                elif is_object:
                    i = _member_value(buf, i, end)
                    if i < 0:
                        return -1
                continue
            if c == 34:
                value_end = _string_end(buf, i + 1, end)[0]
                i = value_end + 1 if value_end >= 0 else -1
            elif c == 45 or 48 <= c <= 57:
                i = _number(buf, i, end)[0]
            else:
                i = _literal_end(buf, i, end)[0]
            if i < 0:
                return -1
            expect_value = False
            continue
        if depth == 0:
            return i
        in_object = (objects >> (depth - 1)) & 1 == 1
        if c == (125 if in_object else 93):  # '}', ']'
            depth -= 1
            i += 1
        elif c == 44:  # ','
            i = _skip_space(buf, i + 1, end)
            expect_value = True
            if in_object:
                i = _member_value(buf, i, end)
                if i < 0:
                    return -1
        else:
            return -1


@compiled(nrt=False)
def _scan_one(buf, s, end, r, names, name_starts, name_lengths, slots, kind, num, whole, text_start, text_len):
    """Read one value (``buf[s:end]``) into row ``r`` of the columns; whether it was taken."""
    i = _skip_space(buf, s, end)
    if i >= end or buf[i] != 123:  # '{'
        return False
    i = _skip_space(buf, i + 1, end)
    if i < end and buf[i] == 125:  # '}': an empty object
        return _skip_space(buf, i + 1, end) == end
    while True:
        if i >= end or buf[i] != 34:
            return False
        key_end, plain = _string_end(buf, i + 1, end)
        if key_end < 0 or not plain:
            return False  # a name with an escape might be one read
        f = _field_of(buf, i + 1, key_end - i - 1, names, name_starts, name_lengths, slots)
        if f >= 0 and kind[f, r] != ABSENT:
            return False  # a field read twice: which one counts is msgspec's to say
        i = _skip_space(buf, key_end + 1, end)
        if i >= end or buf[i] != 58:  # ':'
            return False
        i = _skip_space(buf, i + 1, end)
        if i >= end:
            return False
        c = buf[i]
        if c == 34:
            value_end, plain = _string_end(buf, i + 1, end)
            if value_end < 0:
                return False
            if f >= 0:
                kind[f, r] = STRING if plain else INEXACT
                text_start[f, r] = i + 1
                text_len[f, r] = value_end - i - 1
            i = value_end + 1
        elif c == 45 or 48 <= c <= 57:
            number_end, k, x, n = _number(buf, i, end)
            if number_end < 0:
                return False
            if f >= 0:
                kind[f, r] = k
                num[f, r] = x
                whole[f, r] = n
                text_start[f, r] = i
                text_len[f, r] = number_end - i
            i = number_end
        elif c == 123 or c == 91:  # '{', '['
            i = _nested_end(buf, i, end)
            if i < 0:
                return False
            if f >= 0:
                kind[f, r] = INEXACT  # msgspec builds it, and may refuse what is in it (1e400)
        else:
            i, k = _literal_end(buf, i, end)
            if i < 0:
                return False
            if f >= 0:
                kind[f, r] = k
        i = _skip_space(buf, i, end)
        if i >= end:
            return False
        if buf[i] == 125:  # '}'
            return _skip_space(buf, i + 1, end) == end
        if buf[i] != 44:  # ','
            return False
        i = _skip_space(buf, i + 1, end)


@compiled(nrt=False)
def scan_objects(
    buf, starts, lengths, names, name_starts, name_lengths, slots, kind, num, whole, text_start, text_len, taken
):
    """Read each value ``buf[starts[r] : starts[r] + lengths[r]]`` (uint8) into row ``r``.

    ``names`` (uint8, at ``name_starts``, ``name_lengths``; ``slots`` from :func:`name_slots`)
    are the fields read; ``kind``,
    ``num`` (a number as a double), ``whole`` (an INT as an int64), ``text_start``, ``text_len``
    (the place in ``buf`` of a STRING's text or of a number's) are their columns, one row per
    field. ``taken[r]`` says whether
    the value was read; a value not taken leaves its row ABSENT throughout.

    >>> text = b'{"a": "xy", "b": 1e400}{"b": 7, "a": null, "c": [1, {"d": []}]}'
    >>> buf = np.frombuffer(text, dtype=np.uint8)
    >>> names = np.frombuffer(b"ab", dtype=np.uint8)
    >>> kind, num = np.zeros((2, 2), dtype=np.int8), np.zeros((2, 2))
    >>> ints, at, n = (np.zeros((2, 2), dtype=np.int64) for _ in range(3))
    >>> taken = np.zeros(2, dtype=bool)
    >>> scan_objects(buf, np.array([0, 23]), np.array([23, 40]), names, np.array([0, 1]),
    ...              np.array([1, 1]), name_slots([b"a", b"b"]), kind, num, ints, at, n, taken)
    >>> taken.tolist(), kind[:, 1].tolist() == [NULL, INT], ints[1, 1].item()
    ([False, True], True, 7)
    """
    for r in range(len(starts)):
        ok = _scan_one(buf, starts[r], starts[r] + lengths[r], r, names, name_starts, name_lengths, slots,
                       kind, num, whole, text_start, text_len)  # fmt: skip
        for f in range(kind.shape[0]):
            if kind[f, r] == INEXACT:
                ok = False  # msgspec may refuse the whole value (a number beyond a double)
        taken[r] = ok
        if not ok:
            for f in range(kind.shape[0]):
                kind[f, r] = ABSENT


@compiled(nrt=False)
def _fnv1a(buf, s, n):
    h = _FNV_OFFSET
    for k in range(s, s + n):
        h = (h ^ np.uint64(buf[k])) * _FNV_PRIME
    return h


@compiled(nrt=False)
def intern_spans(buf, starts, lengths, use, slots, entry_hash, entry_start, entry_len, arena, counts, ids):
    """The id of each string ``buf[starts[r] : starts[r] + lengths[r]]`` where ``use[r]`` (-1
    elsewhere) in a table kept across calls, adding the strings it has not seen.

    The table: ``slots`` (open addressing, a power of two, -1 empty) hold entry ids; an entry has
    its FNV-1a hash, and its bytes in ``arena``; ``counts`` = (entries, arena bytes used). The
    caller leaves room for every row's string: at most half the slots full, ``entry_*`` and
    ``arena`` long enough.

    >>> buf = np.frombuffer(b"abcab", dtype=np.uint8)
    >>> slots, ids = np.full(8, -1, dtype=np.int64), np.zeros(3, dtype=np.int64)
    >>> h, at, n = np.zeros(4, dtype=np.uint64), np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.int64)
    >>> arena, counts = np.zeros(16, dtype=np.uint8), np.zeros(2, dtype=np.int64)
    >>> intern_spans(buf, np.array([0, 2, 3]), np.array([2, 1, 2]), np.ones(3, dtype=bool),
    ...              slots, h, at, n, arena, counts, ids)
    >>> ids.tolist(), counts.tolist(), arena[:3].tobytes()
    ([0, 1, 0], [2, 3], b'abc')
    """
    mask = len(slots) - 1
    for r in range(len(starts)):
        if not use[r]:
            ids[r] = -1
            continue
        s, n = starts[r], lengths[r]
        h = _fnv1a(buf, s, n)
        j = np.int64(h & np.uint64(mask))
        while True:
            e = slots[j]
            if e < 0:
                e = counts[0]
                slots[j] = e
                at = counts[1]
                entry_hash[e], entry_start[e], entry_len[e] = h, at, n
                for k in range(n):  # a slice's copy needs numba's runtime
                    arena[at + k] = buf[s + k]
                counts[0] += 1
                counts[1] += n
                break
            if entry_hash[e] == h and entry_len[e] == n and _same_bytes(arena, entry_start[e], buf, s, n):
                break
            j = (j + 1) & mask
        ids[r] = e


@compiled(nrt=False)
def rehash(slots, entry_hash, entries):
    """Fill empty ``slots`` (all -1) with the first ``entries`` entries, by their hashes."""
    mask = len(slots) - 1
    for e in range(entries):
        j = np.int64(entry_hash[e] & np.uint64(mask))
        while slots[j] >= 0:
            j = (j + 1) & mask
        slots[j] = e
