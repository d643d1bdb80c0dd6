"""Which columns of a file nobody configured for are its time, its measures and its keys.

``streamdetect replay`` reads the defaults (``ts``, ``store_id``, ``quantity``, ``unit_price``,
``amount``, ``sku``); an export from elsewhere names them otherwise (``InvoiceDate``,
``Quantity``, ``UnitPrice``, ``Country``) or is a metric series (``timestamp,value``). Before
refusing such a file, replay reads its first rows and guesses, by the columns' names and what
their cells hold, and says what it chose and which flag overrides it. Only what the user left
to the defaults, and the defaults do not find, is guessed:

* **time**: a column whose cells read as times (RFC 3339, epoch seconds or milliseconds, or one
  of the export formats :func:`~streamdetect.sources.guess_time_format` knows), a column with a
  time-like name first; a numeric column only with such a name;
* **measures**: sales when it has a quantity and a unit price, or an amount, under a usual name
  (matched without case, spaces or underscores: ``UnitPrice`` is ``unit_price``), a ``Sales`` or
  ``Value`` column being an amount only beside an order, invoice or receipt id; otherwise a
  series of every numeric column (one: a value series; several: a wide file, one series each);
* **keys**: columns with a store-, site- or host-like name (for a series also item- or
  product-like ones), else the one text column with few distinct values (``Country`` of an
  invoice export, not its descriptions). No key is one stream.

>>> rows = [{"InvoiceDate": "12/1/2010 8:26", "StockCode": f"8512{i % 7}", "Quantity": 6,
...          "UnitPrice": 2.55, "Country": ["France", "Spain"][i % 2], "Description": f"ITEM {i}"}
...         for i in range(200)]
>>> guess = guess_columns(list(rows[0]), rows, EventSchema())
>>> print(" ".join(guess.flags()))
--time-field InvoiceDate --quantity-field Quantity --price-field UnitPrice --sku-field StockCode --key Country
>>> series = [{"timestamp": f"2014-01-01 00:{i:02d}:00", "value": 0.5 * i} for i in range(60)]
>>> guess_columns(["timestamp", "value"], series, EventSchema()).flags()
['--time-field', 'timestamp', '--value-field', 'value']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streamdetect.config import EventSchema
from streamdetect.events import parse_number, parse_timestamp, time_parser
from streamdetect.sources import guess_time_format, reads_as_times

__all__ = ["EXPLICIT_FIELDS", "ColumnGuess", "guess_columns"]

#: The event fields a user can set (flags, the TOML file): what is set is never guessed.
EXPLICIT_FIELDS = ("time_field", "key_fields", "value_field", "count_field", "amount_field", "quantity_field",
                   "unit_price_field", "sku_field", "numeric_strings", "unpriced")

# Usual names, compared after _norm (lower case, letters and digits only).
_TIME_WORDS = ("time", "date", "timestamp", "datetime", "day", "period", "created", "when")
_QUANTITY_NAMES = frozenset({"quantity", "qty", "units", "unitssold", "quantitysold", "qtysold", "numberofunits"})
_PRICE_NAMES = frozenset({"unitprice", "price", "priceeach", "unitcost", "priceperunit", "saleprice", "itemprice"})
_AMOUNT_NAMES = frozenset({"amount", "totalamount", "lineamount", "linetotal", "saleamount", "salesamount",
                           "revenue", "totalprice", "netamount", "grossamount", "total", "ordertotal"})
# Ids of orders, invoices or receipts: a file with one is a file of sales lines, whose "sales" or
# "value" column is a line's amount (without one, "sales" is as likely a count per day and store).
_ORDER_NAMES = frozenset({"orderid", "orderno", "ordernumber", "invoice", "invoiceno", "invoiceid", "invoicenumber",
                          "transactionid", "transaction", "transactionno", "receipt", "receiptid", "receiptno",
                          "ticketid", "basketid", "saleid", "salesid"})
_LINE_AMOUNT_NAMES = frozenset({"sales", "salesvalue", "netsales", "grosssales", "value", "linevalue"})
_SKU_NAMES = frozenset({"sku", "stockcode", "productid", "itemid", "product", "item", "itemcode", "productcode",
                        "article", "articleid", "ean", "upc", "barcode", "itemnumber", "productnumber", "itemnbr"})
_KEY_NAMES = frozenset({"store", "storeid", "storenbr", "storeno", "storenumber", "storecode", "shop", "shopid",
                        "branch", "branchid", "location", "locationid", "site", "siteid", "outlet", "outletid",
                        "country", "region", "market", "host", "hostname", "instance", "server", "machine",
                        "device", "deviceid", "sensor", "sensorid", "series", "seriesid", "node", "pod"})
# Names of identifiers (a customer, an invoice, a row): numbers that are not measures.
_ID_ENDINGS = ("id", "no", "nbr", "number", "code", "key", "index", "zip", "invoice", "order")
_SAMPLE_SHARE = 0.95  # of a column's non-empty cells that must be numbers for it to be numeric
_MAX_KEY_VALUES = 100  # distinct values a text column may have in the sample to be taken as a key


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True)
class ColumnGuess:
    """What :func:`guess_columns` found; ``None`` (or empty) where it guessed nothing."""

    time_field: str | None = None
    time_of_day: str | None = None  # a column with the time of day of a time column of dates alone
    quantity_field: str | None = None
    unit_price_field: str | None = None
    amount_field: str | None = None
    sku_field: str | None = None
    key_fields: tuple[str, ...] = ()
    value_fields: tuple[str, ...] = ()  # a series: one column, or several (a wide file)
    numeric_strings: bool = False  # a chosen measure writes its numbers as strings ("19.99")
    unpriced: bool = False  # sales lines without amounts (an order or item column, no measure)

    def flags(self) -> list[str]:
        """The guess as ``replay`` flags (what to give to decide otherwise)."""
        out: list[str] = []
        for flag, value in (
            ("--time-field", self.time_field),
            ("--time-of-day-field", self.time_of_day),
            ("--quantity-field", self.quantity_field),
            ("--price-field", self.unit_price_field),
            ("--amount-field", self.amount_field),
            ("--sku-field", self.sku_field),
            ("--key", ",".join(self.key_fields)),
            ("--value-field", ",".join(self.value_fields)),
        ):
            if value:
                out += [flag, value]
        if self.numeric_strings:
            out.append("--numeric-strings")
        if self.unpriced:
            out.append("--unpriced")
        return out


def _cells(rows: Sequence[Mapping[str, Any]], column: str) -> list[Any]:
    return [r[column] for r in rows if r.get(column) not in (None, "")]


def _numeric(values: Sequence[Any], strings: bool = False) -> bool:
    """Whether the cells are numbers (with ``strings``, also numbers written as strings, as JSON
    payloads write money: ``"19.99"``)."""
    if not values:
        return False
    numbers = sum(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if strings:
        numbers += sum(isinstance(v, str) and parse_number(v.strip()) is not None for v in values)
    return numbers >= _SAMPLE_SHARE * len(values)


def _as_strings(rows: Sequence[Mapping[str, Any]], column: str | None) -> bool:
    return column is not None and any(isinstance(v, str) for v in _cells(rows, column))


def _identifier(column: str) -> bool:
    """Whether a column's numbers name things (a customer, a row, an item) rather than measure them."""
    name = _norm(column)
    return name.endswith(_ID_ENDINGS) or name in _SKU_NAMES


def _named(columns: Iterable[str], names: frozenset[str]) -> str | None:
    return next((c for c in columns if _norm(c) in names), None)


def _time_column(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], schema: EventSchema) -> str | None:
    def timelike(c: str) -> bool:
        n = _norm(c)
        return n == "ts" or any(word in n for word in _TIME_WORDS)

    for column in sorted(columns, key=lambda c: not timelike(c)):  # time-like names first, else in order
        cells = _cells(rows, column)
        if not cells or (_numeric(cells) and not timelike(column)):
            continue
        if reads_as_times(cells, schema.min_time_ms, schema.max_time_ms):
            return column
    return None


_CLOCK = re.compile(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?")  # 9:58, 09:58:11, 09:58:11.5


def _dates_alone(cells: Sequence[Any], schema: EventSchema) -> bool:
    """Whether a time column's cells are all midnights (dates without a time)."""
    sample = [c for c in cells[:500] if c is not None]
    fmt = guess_time_format(sample, schema.min_time_ms, schema.max_time_ms)
    parse = (time_parser(fmt) if fmt is not None else None) or parse_timestamp
    try:
        return bool(sample) and all(parse(c) % 86_400_000 == 0 for c in sample)
    except (ValueError, TypeError, OverflowError):
        return False


def _time_of_day(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], time_field: str) -> str | None:
    """The column whose cells are times of day (``09:58:11``), to join to a column of dates."""
    for c in columns:
        cells = _cells(rows, c)
        if c != time_field and cells and sum(isinstance(v, str) and _CLOCK.fullmatch(v.strip()) is not None
                                             for v in cells) >= _SAMPLE_SHARE * len(cells):
            return c
    return None


def guess_columns(
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    schema: EventSchema,
    explicit: Iterable[str] = (),
) -> ColumnGuess:
    """Guess the fields ``schema`` names but ``columns`` lack, from the sample ``rows``.

    Parameters
    ----------
    columns
        The file's columns (a CSV header; the fields of a JSONL file's first objects).
    rows
        The first rows, as records (numbers as numbers).
    schema
        The configured fields (defaults included).
    explicit
        The fields of ``EXPLICIT_FIELDS`` the user set: they are never guessed, and setting any
        of the measures (value, count, amount, quantity, unit price) leaves all of them alone.
    """
    given = set(explicit)
    present = set(columns)
    time_field = None
    if "time_field" not in given and schema.time_field not in present:
        time_field = _time_column(columns, rows, schema)
    taken = {time_field or schema.time_field}
    time_of_day = None
    date_column = time_field or (schema.time_field if schema.time_field in present else None)
    if date_column is not None and _dates_alone(_cells(rows, date_column), schema):
        time_of_day = _time_of_day(columns, rows, date_column)
        taken.add(time_of_day or "")

    measures: dict[str, str | None] = {}
    values: tuple[str, ...] = ()
    unpriced = False
    measure_fields = {"value_field", "count_field", "amount_field", "quantity_field", "unit_price_field", "unpriced"}
    default_sales = schema.amount_field in present or {schema.quantity_field, schema.unit_price_field} <= present
    sales = default_sales or bool(given & measure_fields) or schema.aggregated
    if not sales:
        numeric = [c for c in columns if c not in taken and _numeric(_cells(rows, c), strings=True)]
        quantity, price = _named(numeric, _QUANTITY_NAMES), _named(numeric, _PRICE_NAMES)
        lines = _named(columns, _ORDER_NAMES) is not None
        amount = _named(numeric, _AMOUNT_NAMES | (_LINE_AMOUNT_NAMES if lines else frozenset()))
        if quantity and price:
            measures = {"quantity_field": quantity, "unit_price_field": price}
        elif amount:
            measures = {"amount_field": amount, "quantity_field": quantity}
        sales = bool(measures)
        # Lines of orders or of items sold, with no amount at all: a till's log, counted.
        unpriced = not sales and (lines or _named(columns, _SKU_NAMES) is not None) and not any(
            c != quantity and not _identifier(c) and _norm(c) not in _ORDER_NAMES for c in numeric
        )
        if unpriced:
            measures = {"quantity_field": quantity}
            sales = True
    taken |= {c for c in measures.values() if c}

    sku = None
    if sales and "sku_field" not in given and schema.sku_field not in present:
        sku = _named([c for c in columns if c not in taken], _SKU_NAMES)
        taken.add(sku or "")

    keys: tuple[str, ...] = ()
    if "key_fields" not in given and not set(schema.key_fields) <= present:
        names = _KEY_NAMES if sales else _KEY_NAMES | _SKU_NAMES
        keys = tuple(c for c in columns if c not in taken and _norm(c) in names)[:2]
        if not keys:
            # the one text column with few distinct values (a country, a host), not an id or a text
            few = []
            for c in columns:
                cells = _cells(rows, c)
                if c in taken or not cells or _numeric(cells) or c in (schema.channel_field, schema.currency_field):
                    continue
                distinct = len({str(v) for v in cells})
                if distinct <= min(_MAX_KEY_VALUES, max(len(cells) // 20, 2)):
                    few.append((distinct, c))
            keys = (min(few)[1],) if few else ()
        taken |= set(keys)

    if not sales and not schema.aggregated and not given & measure_fields:
        values = tuple(
            c for c in columns if c not in taken and not _identifier(c) and _numeric(_cells(rows, c), strings=True)
        )
    chosen = [*measures.values(), *values]
    return ColumnGuess(
        time_field=time_field,
        time_of_day=time_of_day,
        quantity_field=measures.get("quantity_field"),
        unit_price_field=measures.get("unit_price_field"),
        amount_field=measures.get("amount_field"),
        sku_field=sku,
        key_fields=keys,
        value_fields=values,
        numeric_strings="numeric_strings" not in given and any(_as_strings(rows, c) for c in chosen),
        unpriced=unpriced,
    )
