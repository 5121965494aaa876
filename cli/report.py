"""The month's report as one self-contained HTML page (issue #8): the three ledgers per channel
kind, the fulfillment forecast as a store × month heatmap, the commission totals per payee and part,
and the statement digest with its rule versions.

Two steps, kept apart:

* :func:`gather_report` reads the store once and calls the projections the commands use
  (``ledgers``, ``liability``, ``Settlement.statement``) — every figure on the page is theirs;
* :func:`render_html` is a pure function of that data and a language: tables in HTML, charts drawn
  by matplotlib as static SVG and inlined (text kept as text, ids salted per chart, no date), inline
  CSS, no script and nothing loaded from anywhere. Same events and rules ⇒ same bytes (on one
  machine: the chart layout follows the metrics of the fonts installed there).

Every string that comes from events (store, channel and staff names) is escaped, and phone-like
digit runs in it are masked. :func:`render_report` is both in one call (the ``report`` command and
the HTTP service use it).
"""

from __future__ import annotations

import html
import io
import logging
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import matplotlib
import numpy
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from cli.common import fail, money
from ledger.events import NO_SHOW_REASONS
from ledger.privacy import mask_phone
from ledger.projector import Projector
from ledger.store import LedgerStore, Recorded
from projections.directory import Directory
from projections.ledgers import ChannelLedgers, LedgersReport, ledgers
from projections.liability import LiabilityReport, liability
from projections.pipeline import facts
from projections.settlement import Settlement, Statement, latest_month_with_activity, month_last_day, parse_month

matplotlib.use("Agg")  # no display: figures are drawn to SVG text only

LANGUAGES = ("zh", "en")
FORECAST_MONTHS = 3
"""Forecast months on the page: the month after ``as_of`` and the two after it (as ``liability``)."""
CHART_WIDTH = 10.0
"""Inches (96 px each on screen): the width of the page's content."""
PAYEES_CHARTED = 30
"""The commission chart shows the payees with the largest totals; the table lists them all."""

# --- the figures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportData:
    """What the page shows, as the projections computed it."""

    month: str
    as_of: date
    position: int
    ledgers: LedgersReport
    liability: LiabilityReport
    statement: Statement
    directory: Directory


def gather_report(store: LedgerStore, month: str, as_of: date | None = None) -> ReportData:
    """Read the store once and compute the month's ledgers, the liability and forecast as of
    ``as_of`` (default: the month's last day) and the month's statement. Refuses (``CommandError``)
    a malformed month, an empty store and a month without any activity."""
    try:
        month = parse_month(month)
    except ValueError as error:
        fail(str(error))
    day = as_of or month_last_day(month)
    position = store.position()
    if position == 0:
        fail("the store holds no events", hint="channel-ledger init, then ingest events (or build one with channel-ledger demo)")
    recorded = list(store.read(upto=position))
    shared = facts(recorded, position)
    data = ReportData(
        month=month,
        as_of=day,
        position=position,
        ledgers=ledgers(shared.events, month, book=shared.book, attr=shared.attribution),
        liability=liability(shared.events, day, FORECAST_MONTHS, book=shared.book),
        statement=statement_at(store, month, recorded, position),
        directory=shared.directory,
    )
    if not has_activity(data):
        latest = latest_month_with_activity(shared.events, shared.book)
        hint = f"the latest month with orders, sessions or refunds is {latest}" if latest else "ingest some events first"
        fail(f"no activity in {month}: no lead, appointment, order, session, refund or commission line", hint=hint)
    return data


def statement_at(store: LedgerStore, month: str, recorded: Sequence[Recorded], position: int) -> Statement:
    """``month``'s statement as of ``position``: the kept projection's, refreshed — the same
    statement as a fold of ``recorded`` (tests/test_projector.py), without settling the whole
    ledger again (a third of the 1M demo's report) — unless another writer moved the store on
    since ``recorded`` was read; then the fold of ``recorded``, so that every figure on the page
    is of one position."""
    projector = Projector(store)
    statement, _ = projector.statement(month)
    kept = projector.kept()
    if kept is not None and kept.position == position:
        return statement
    return Settlement(((r.position, r.event) for r in recorded), position=position).statement(month)


def has_activity(data: ReportData) -> bool:
    t = data.ledgers.total.tally
    counts = (t.leads, t.triaged, t.booked, t.attended, t.no_shows, t.cancelled, t.orders, t.sessions_delivered, t.refunds)
    return bool(data.statement.lines) or any(counts)


def render_report(store: LedgerStore, month: str, *, lang: str = "zh", as_of: date | None = None) -> str:
    """The month's report page (HTML, UTF-8 text) from ``store``; ``lang`` ``zh`` or ``en``; the
    forecast as of ``as_of`` (default: the month's last day). A malformed month or language, an
    empty store or a month without activity raise ``cli.common.CommandError`` (one line + hint)."""
    if lang not in LANGUAGES:
        fail(f"unknown language {lang!r}", hint="one of: " + ", ".join(LANGUAGES))
    return render_html(gather_report(store, month, as_of), lang)


# --- words --------------------------------------------------------------------------------------

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "渠道账本月报",
        "as_of": "预测截至",
        "position": "账本位置",
        "rules": "规则版本",
        "timezone": "时区",
        "key_figures": "本月要点",
        "commission_total": "佣金合计",
        "deferred_revenue_now": "合同负债（截至 {day}）",
        "outstanding_now": "未履约课次（截至 {day}）",
        "ledgers": "三张账 · 按渠道类型",
        "ledgers_note": "线索计入其来源渠道，之后各步骤计入当时的归属渠道；没有归属的客户为自然到店。",
        "funnel": "线索漏斗",
        "no_show_reasons": "爽约原因",
        "mix": "单次项目与疗程包",
        "mix_items": "件数",
        "mix_amount": "金额（元）",
        "by_kind": "按渠道类型",
        "by_channel": "按渠道",
        "metric": "指标",
        "channel": "渠道",
        "kind": "类型",
        "group": "集团合计",
        "forecast": "履约预测 · 门店 × 月份",
        "forecast_note": "按疗程节奏摊排未履约课次所需的治疗师工时 ÷ 申报产能；超过阈值 {threshold} 的月份标为超负荷。预测从 {first} 起，不完整的首月按天折算。",
        "heatmap": "治疗师产能利用率",
        "utilisation": "利用率",
        "threshold": "阈值",
        "over": "超负荷",
        "no_capacity": "无产能",
        "store": "门店",
        "month": "月份",
        "days": "天数",
        "hours": "需求工时",
        "capacity_hours": "治疗师工时",
        "room_capacity_hours": "房间工时",
        "room_utilisation": "房间利用率",
        "flag": "标记",
        "no_forecast": "没有门店或产能数据。",
        "commission": "本月佣金 · 按收款人与部分",
        "commission_chart": "佣金（元）",
        "commission_chart_top": "佣金（元）· 合计最高的 {n} 位，完整名单见下表",
        "no_commission": "本月没有佣金明细。",
        "payee": "收款人",
        "name": "姓名",
        "role": "岗位",
        "total": "合计",
        "payees": "{n} 位收款人",
        "statement": "结算单摘要",
        "status": "状态",
        "open": "未结账",
        "closed_ok": "已结账（构建至位置 {position}；摘要已核对）",
        "closed_bad": "已结账（构建至位置 {position}；摘要不一致！重建得到 {rebuilt}）",
        "lines": "明细行数",
        "digest": "摘要（SHA-256）",
        "adjusts": "含已结账月份的调整",
        "findings": "备注",
        "footer": "由 channel-ledger 根据账本位置 {position} 之前的事件生成；相同的事件与规则生成相同的页面。",
        "sessions_unit": "{n} 课次",
    },
    "en": {
        "title": "Channel ledger monthly report",
        "as_of": "forecast as of",
        "position": "ledger position",
        "rules": "rule versions",
        "timezone": "time zone",
        "key_figures": "The month at a glance",
        "commission_total": "commission total",
        "deferred_revenue_now": "deferred revenue (as of {day})",
        "outstanding_now": "outstanding sessions (as of {day})",
        "ledgers": "The three ledgers by channel kind",
        "ledgers_note": "Leads count under their own channel, later steps under the owner channel at the time; customers without an owner are walk-ins.",
        "funnel": "Lead funnel",
        "no_show_reasons": "No-show reasons",
        "mix": "Fill items vs course packages",
        "mix_items": "items",
        "mix_amount": "amount (CNY)",
        "by_kind": "By channel kind",
        "by_channel": "By channel",
        "metric": "metric",
        "channel": "channel",
        "kind": "kind",
        "group": "group",
        "forecast": "Fulfillment forecast · store × month",
        "forecast_note": "Clinician hours needed for the outstanding sessions at the courses' cadence ÷ declared capacity; months above the {threshold} threshold are flagged. The forecast starts on {first}; a partial first month is prorated.",
        "heatmap": "Clinician utilisation",
        "utilisation": "utilisation",
        "threshold": "threshold",
        "over": "OVER",
        "no_capacity": "no capacity",
        "store": "store",
        "month": "month",
        "days": "days",
        "hours": "hours owed",
        "capacity_hours": "clinician hours",
        "room_capacity_hours": "room hours",
        "room_utilisation": "room util.",
        "flag": "flag",
        "no_forecast": "No stores or capacity declared.",
        "commission": "Commission this month · by payee and part",
        "commission_chart": "commission (CNY)",
        "commission_chart_top": "commission (CNY) · the {n} largest totals; every payee is in the table",
        "no_commission": "No commission lines this month.",
        "payee": "payee",
        "name": "name",
        "role": "role",
        "total": "total",
        "payees": "{n} payees",
        "statement": "Statement digest",
        "status": "status",
        "open": "open",
        "closed_ok": "closed (built to position {position}; digest verified)",
        "closed_bad": "closed (built to position {position}; DIGEST MISMATCH: rebuilt {rebuilt})",
        "lines": "lines",
        "digest": "digest (SHA-256)",
        "adjusts": "adjusts closed months",
        "findings": "notes",
        "footer": "Made by channel-ledger from the events up to ledger position {position}; the same events and rules give the same page.",
        "sessions_unit": "{n} sessions",
    },
}
KIND_NAMES = {
    "zh": {"medical_trust": "医疗信任型", "sports_scene": "运动场景型", "online_platform": "线上运营型", "walk-in": "自然到店", "unknown": "未知"},
    "en": {"medical_trust": "medical trust", "sports_scene": "sports scene", "online_platform": "online platform", "walk-in": "walk-in", "unknown": "unknown"},
}
REASON_NAMES = {
    "zh": {
        "schedule_conflict": "时间冲突", "cost_concern": "费用顾虑", "unsure_of_value": "不确定价值",
        "symptoms_improved": "症状好转", "chose_competitor": "选择了别家", "unreachable": "联系不上", "other": "其他",
    },
    "en": {reason: reason.replace("_", " ") for reason in NO_SHOW_REASONS},
}
PART_NAMES = {
    "zh": {"source": "来源奖励", "deal": "成交奖励", "fulfillment": "履约奖励"},
    "en": {"source": "source", "deal": "deal", "fulfillment": "fulfillment"},
}
ROLE_NAMES = {
    "zh": {"channel_agent": "渠道专员", "consultant": "顾问", "clinician": "治疗师", "store_manager": "店长", "front_desk": "前台"},
    "en": {"channel_agent": "channel agent", "consultant": "consultant", "clinician": "clinician", "store_manager": "store manager", "front_desk": "front desk"},
}
METRIC_NAMES = {
    "zh": {
        "leads": "线索", "valid_leads": "有效线索", "collisions": "撞单", "triaged": "已分诊", "booked": "已预约",
        "attended": "到店评估", "no_shows": "爽约", "no_show_rate": "爽约率", "arrival_rate": "到店率",
        "assessed_customers": "评估客户", "paying_after_assessment": "评估后付费", "conversion_rate": "转化率",
        "conversion_within_24h": "24 小时内转化", "orders": "订单", "order_amount": "订单金额", "average_order_value": "客单价",
        "fill_items": "单次项目", "fill_item_amount": "单次项目金额", "course_packages": "疗程包", "course_package_amount": "疗程包金额",
        "gross_margin": "毛利率", "sessions_sold": "售出课次", "sessions_delivered": "交付课次", "outstanding_sessions": "月末未履约课次",
        "outstanding_hours": "月末未履约工时", "deferred_revenue": "月末合同负债", "refund_rate": "退款率",
    },
    "en": {
        "leads": "leads", "valid_leads": "valid leads", "collisions": "collisions", "triaged": "triaged", "booked": "booked",
        "attended": "attended", "no_shows": "no-shows", "no_show_rate": "no-show rate", "arrival_rate": "arrival rate",
        "assessed_customers": "assessed customers", "paying_after_assessment": "paid after assessment", "conversion_rate": "conversion rate",
        "conversion_within_24h": "converted within 24 h", "orders": "orders", "order_amount": "order amount", "average_order_value": "average order value",
        "fill_items": "fill items", "fill_item_amount": "fill item amount", "course_packages": "course packages", "course_package_amount": "course package amount",
        "gross_margin": "gross margin", "sessions_sold": "sessions sold", "sessions_delivered": "sessions delivered", "outstanding_sessions": "outstanding at month end",
        "outstanding_hours": "outstanding hours at month end", "deferred_revenue": "deferred revenue at month end", "refund_rate": "refund rate",
    },
}

# Which ledger each metric is read from, and how it is shown.
LEDGER_METRICS: tuple[tuple[str, str, str], ...] = (
    ("lead_quality", "leads", "count"),
    ("lead_quality", "valid_leads", "count"),
    ("lead_quality", "collisions", "count"),
    ("lead_quality", "triaged", "count"),
    ("lead_quality", "booked", "count"),
    ("lead_quality", "attended", "count"),
    ("lead_quality", "no_shows", "count"),
    ("lead_quality", "no_show_rate", "ratio"),
    ("lead_quality", "arrival_rate", "ratio"),
    ("deal_structure", "assessed_customers", "count"),
    ("deal_structure", "paying_after_assessment", "count"),
    ("deal_structure", "conversion_rate", "ratio"),
    ("deal_structure", "conversion_within_24h", "ratio"),
    ("deal_structure", "orders", "count"),
    ("deal_structure", "order_amount", "money"),
    ("deal_structure", "average_order_value", "money"),
    ("deal_structure", "fill_items", "count"),
    ("deal_structure", "fill_item_amount", "money"),
    ("deal_structure", "course_packages", "count"),
    ("deal_structure", "course_package_amount", "money"),
    ("deal_structure", "gross_margin", "percent"),
    ("fulfillment_pressure", "sessions_sold", "count"),
    ("fulfillment_pressure", "sessions_delivered", "count"),
    ("fulfillment_pressure", "outstanding_sessions", "count"),
    ("fulfillment_pressure", "outstanding_hours", "money"),
    ("fulfillment_pressure", "deferred_revenue", "money"),
    ("fulfillment_pressure", "refund_rate", "percent"),
)
CHANNEL_METRICS = ("leads", "valid_leads", "attended", "no_show_rate", "conversion_rate", "orders", "order_amount", "sessions_sold", "outstanding_sessions", "deferred_revenue")
FUNNEL = (("lead_quality", "leads"), ("lead_quality", "valid_leads"), ("lead_quality", "triaged"), ("lead_quality", "booked"), ("lead_quality", "attended"), ("deal_structure", "paying_after_assessment"))
PARTS = ("source", "deal", "fulfillment")

KIND_COLOURS = {"medical_trust": "#2b6cb0", "sports_scene": "#2f855a", "online_platform": "#dd6b20", "walk-in": "#718096", "unknown": "#a0aec0"}
REASON_COLOURS = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#b279a2", "#9d755d")
CLASS_COLOURS = {"fill_item": "#9f7aea", "course_package": "#3182ce"}
PART_COLOURS = {"source": "#3182ce", "deal": "#dd6b20", "fulfillment": "#38a169"}

CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei", "WenQuanYi Micro Hei", "Hiragino Sans GB", "SimHei")
PAGE_FONTS = ", ".join([*(f'"{f}"' for f in CJK_FONTS), "system-ui", "sans-serif"])


# --- text from events ---------------------------------------------------------------------------

_PHONE_LIKE = re.compile(r"(?<![\d+])(?:\+\d(?:[\s-]?\d){7,14}|1[3-9]\d(?:[\s-]?\d){8})(?!\d)")
"""A mainland mobile (11 digits from 13…–19…) or an international number (+ and 8–15 digits),
spaces and dashes allowed between digits; dates, amounts and ids stay as they are."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def shown(text: str | None) -> str:
    """A string from the events as it may be shown: control characters as spaces, phone-like digit
    runs masked (a report names channels and staff, never customers)."""
    cleaned = _CONTROL.sub(" ", text or "")
    return _PHONE_LIKE.sub(lambda m: mask_phone(re.sub(r"[\s-]", "", m.group(0))), cleaned)


def esc(text: str | None) -> str:
    """``shown`` and HTML-escaped: for every string from the events that goes into the page."""
    return html.escape(shown(text), quote=True)


def short(text: str | None, limit: int = 22) -> str:
    """A chart label: ``shown`` and cut to ``limit`` characters (matplotlib escapes it in the SVG)."""
    value = shown(text).strip()
    return value if len(value) <= limit else value[: limit - 1] + "…"


LEDGER_PARTS = ("lead_quality", "deal_structure", "fulfillment_pressure")


def _three_ledgers(ledger: ChannelLedgers) -> dict[str, dict]:
    """The three ledgers of a channel, kind or the group, as the projection gives them."""
    return {part: getattr(ledger.tally, part)() for part in LEDGER_PARTS}


def percent(value: Decimal | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def cell(value: object, style: str) -> str:
    """A ledger figure as text: counts with thousands separators, money with two decimals, a ratio
    with its numerator and denominator, a money ratio as its percentage."""
    if style == "count":
        return f"{value:,}"
    if style == "money":
        return "–" if value is None else money(value)  # type: ignore[arg-type]
    if style == "ratio":
        return value.text()  # type: ignore[union-attr]
    return value.percent()  # type: ignore[union-attr]


# --- charts -------------------------------------------------------------------------------------


def _rc(name: str) -> dict[str, object]:
    """matplotlib settings for one chart: text stays text (the viewer's CJK fonts draw it), no
    mathtext from event strings, ids salted per chart so that several SVGs share one page."""
    return {
        "svg.fonttype": "none",
        "svg.hashsalt": f"channel-ledger-report:{name}",
        "font.family": "sans-serif",
        "font.sans-serif": [*CJK_FONTS, "DejaVu Sans"],
        "font.size": 9,
        "text.parse_math": False,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 10,
        "axes.titleweight": "bold",
        "legend.frameon": False,
    }


_DRAWING = threading.Lock()
"""matplotlib's settings and the warning filters are global: one chart at a time (the HTTP service
renders from several threads)."""


def svg_of(name: str, draw: Callable[[Figure], None], size: tuple[float, float], label: str) -> str:
    """Draw a chart with ``draw`` on a fresh figure and return it as an inline ``<svg>`` element."""
    with _DRAWING, matplotlib.rc_context(_rc(name)), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a glyph missing from the measuring font
        quiet = logging.getLogger("matplotlib.font_manager")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # a CJK font not installed: text stays text, the viewer draws it
        try:
            figure = Figure(figsize=size, layout="constrained")
            draw(figure)
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
        finally:
            quiet.setLevel(level)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    return text.replace("<svg ", f'<svg role="img" aria-label="{html.escape(label, quote=True)}" ', 1).strip()


def funnel_chart(data: ReportData, lang: str) -> str:
    """Small multiples, one panel a channel kind: leads → valid → triaged → booked → attended →
    paid after assessment. Kinds with none of these in the month (walk-ins often) get no panel."""
    words = METRIC_NAMES[lang]
    stages = [words[key] for _, key in FUNNEL]
    panels = [(k, [_three_ledgers(k)[part][key] for part, key in FUNNEL]) for k in data.ledgers.kinds]
    panels = [(k, values) for k, values in panels if any(values)] or panels

    def draw(figure: Figure) -> None:
        axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for ax, (kind, values) in zip(axes, panels):
            bars = ax.barh(range(len(values)), values, color=KIND_COLOURS.get(kind.kind, "#a0aec0"), height=0.65)
            ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=2, fontsize=8)
            ax.set_title(KIND_NAMES[lang].get(kind.kind, kind.kind))
            ax.set_xlim(0, max(max(values), 1) * 1.25)
            ax.tick_params(axis="x", labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        axes[0].set_yticks(range(len(stages)), stages)
        axes[0].invert_yaxis()

    return svg_of("funnel", draw, (CHART_WIDTH, 2.8), WORDS[lang]["funnel"])


def no_show_chart(data: ReportData, lang: str) -> str:
    """One stacked bar a channel kind: its no-shows by reason."""
    kinds = data.ledgers.kinds
    names = [KIND_NAMES[lang].get(k.kind, k.kind) for k in kinds]

    def draw(figure: Figure) -> None:
        ax = figure.subplots()
        left = [0] * len(kinds)
        for reason, colour in zip(NO_SHOW_REASONS, REASON_COLOURS):
            counts = [k.tally.no_show_reasons[reason] for k in kinds]
            ax.barh(range(len(kinds)), counts, left=left, color=colour, height=0.6, label=REASON_NAMES[lang][reason])
            left = [a + b for a, b in zip(left, counts)]
        for y, total in enumerate(left):
            ax.text(total, y, f" {total:,}", va="center", fontsize=8)
        ax.set_yticks(range(len(kinds)), names)
        ax.invert_yaxis()
        ax.set_xlim(0, max(max(left), 1) * 1.12)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(METRIC_NAMES[lang]["no_shows"])
        figure.legend(loc="outside lower center", ncols=len(NO_SHOW_REASONS), fontsize=8)

    return svg_of("no-shows", draw, (CHART_WIDTH, 0.42 * len(kinds) + 1.3), WORDS[lang]["no_show_reasons"])


CLASS_COUNTS = {"fill_item": "fill_items", "course_package": "course_packages"}
MIX_PANELS = (
    ("mix_items", (("fill_item", "fill_items"), ("course_package", "course_packages"))),
    ("mix_amount", (("fill_item", "fill_item_amount"), ("course_package", "course_package_amount"))),
)


def mix_chart(data: ReportData, lang: str) -> str:
    """Fill items vs course packages per channel kind: item counts and amounts, side by side."""
    kinds = data.ledgers.kinds
    names = [KIND_NAMES[lang].get(k.kind, k.kind) for k in kinds]
    deals = [k.tally.deal_structure() for k in kinds]

    def draw(figure: Figure) -> None:
        axes = figure.subplots(1, len(MIX_PANELS), sharey=True)
        for ax, (title, segments) in zip(axes, MIX_PANELS):
            left = [0.0] * len(kinds)
            for product_class, key in segments:
                values = [float(d[key]) for d in deals]
                ax.barh(range(len(kinds)), values, left=left, height=0.6, color=CLASS_COLOURS[product_class], label=METRIC_NAMES[lang][CLASS_COUNTS[product_class]])
                left = [a + b for a, b in zip(left, values)]
            ax.set_title(WORDS[lang][title])
            ax.set_xlim(0, max(max(left), 1) * 1.05)
            ax.tick_params(axis="x", labelsize=7)
            ax.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}")
        axes[0].set_yticks(range(len(kinds)), names)
        axes[0].invert_yaxis()
        axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)

    return svg_of("mix", draw, (CHART_WIDTH, 0.42 * len(kinds) + 1.3), WORDS[lang]["mix"])


def heatmap_chart(data: ReportData, lang: str) -> str:
    """Clinician utilisation per store (rows) and forecast month (columns); flagged cells framed."""
    report = data.liability
    words = WORDS[lang]
    stores = sorted({row.store_id for row in report.forecast})
    months = list(report.forecast_months)
    store_names = {b.key: b.label for b in report.by_store}
    cells = {(row.store_id, row.month): row for row in report.forecast}
    values = [[cells[(s, m)].utilisation for m in months] for s in stores]
    highest = max((float(v) for row in values for v in row if v is not None), default=0.0)
    norm = Normalize(vmin=0.0, vmax=max(1.0, highest))
    threshold = float(report.rules.pressure_threshold)

    def draw(figure: Figure) -> None:
        ax = figure.subplots()
        grid = numpy.ma.masked_invalid([[numpy.nan if v is None else float(v) for v in row] for row in values])
        cmap = matplotlib.colormaps["YlOrRd"].with_extremes(bad="#e2e8f0")
        mesh = ax.pcolormesh(grid, cmap=cmap, norm=norm, edgecolors="white", linewidth=2)
        for y, store in enumerate(stores):
            for x, month in enumerate(months):
                row = cells[(store, month)]
                level = 0.0 if row.utilisation is None else norm(float(row.utilisation))
                text = words["no_capacity"] if row.utilisation is None else percent(row.utilisation)
                if row.flagged:
                    text += f"\n{words['over']}"
                    ax.add_patch(Rectangle((x + 0.03, y + 0.05), 0.94, 0.9, fill=False, edgecolor="#1a202c", linewidth=2.2))
                ax.text(
                    x + 0.5, y + 0.5, text, ha="center", va="center", fontsize=9, linespacing=1.5,
                    color="white" if level > 0.6 else "#1a202c", fontweight="bold" if row.flagged else "normal",
                )
        ax.set_xticks([x + 0.5 for x in range(len(months))], months)
        ax.set_yticks([y + 0.5 for y in range(len(stores))], [short(f"{store_names.get(s) or s} · {s}", 30) for s in stores])
        ax.invert_yaxis()
        ax.tick_params(length=0)
        ax.xaxis.tick_top()
        for spine in ax.spines.values():
            spine.set_visible(False)
        bar = figure.colorbar(mesh, ax=ax, fraction=0.05, pad=0.02)
        bar.solids.set_rasterized(False)  # vector, like the rest: no embedded bitmap
        bar.solids.set_edgecolor("face")  # no seams between its bands
        bar.ax.axhline(threshold, color="#1a202c", linewidth=1.5)
        bar.ax.yaxis.set_major_formatter(lambda v, _: f"{v * 100:.0f}%")
        bar.set_label(f"{words['utilisation']} · {words['threshold']} {percent(report.rules.pressure_threshold)}")

    height = 0.5 * len(stores) + 1.1
    return svg_of("heatmap", draw, (CHART_WIDTH, height), words["heatmap"])


def commission_chart(data: ReportData, lang: str) -> str:
    """Per payee, the three parts as stacked bars (clawbacks to the left of zero); the largest totals."""
    statement = data.statement
    ranked = sorted(statement.totals, key=lambda t: (-t.total, t.payee))[:PAYEES_CHARTED]
    words = WORDS[lang]
    labels = [short(f"{payee_name(data.directory, t.payee)} · {t.payee}", 28) for t in ranked]

    def draw(figure: Figure) -> None:
        ax = figure.subplots()
        right = [0.0] * len(ranked)
        left = [0.0] * len(ranked)
        for part in PARTS:
            amounts = [float(getattr(t, part)) for t in ranked]
            starts = [hi if a >= 0 else lo for a, hi, lo in zip(amounts, right, left)]
            ax.barh(range(len(ranked)), amounts, left=starts, height=0.65, color=PART_COLOURS[part], label=PART_NAMES[lang][part])
            right = [hi + max(a, 0.0) for a, hi in zip(amounts, right)]
            left = [lo + min(a, 0.0) for a, lo in zip(amounts, left)]
        for y, t in enumerate(ranked):
            ax.text(right[y], y, f" {money(t.total)}", va="center", fontsize=8)
        ax.set_yticks(range(len(ranked)), labels)
        ax.invert_yaxis()
        ax.axvline(0, color="#4a5568", linewidth=0.8)
        ax.set_xlim(min(min(left), 0.0) * 1.1, max(max(right), 1.0) * 1.18)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}")
        ax.legend(loc="lower right", fontsize=8)

    return svg_of("commission", draw, (CHART_WIDTH, 0.28 * len(ranked) + 1.0), words["commission_chart"])


def payee_name(directory: Directory, payee: str) -> str:
    staff = directory.staff.get(payee)
    return staff.name if staff else "?"


# --- the page -----------------------------------------------------------------------------------

CSS = """
:root { color-scheme: light; }
body { font-family: FONTS; margin: 0; background: #f7fafc; color: #1a202c; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 48px; }
header h1 { font-size: 26px; margin: 0 0 4px; }
header p { margin: 0; color: #4a5568; }
section { background: #fff; border: 1px solid #e2e8f0; border-radius: 8px; padding: 16px 20px; margin-top: 20px; }
h2 { font-size: 20px; margin: 0 0 8px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.note { color: #4a5568; font-size: 13px; margin: 4px 0 8px; }
figure { margin: 10px 0; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { font-weight: 600; font-size: 14px; margin-bottom: 4px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 12px; margin: 0; }
.cards div { background: #ebf8ff; border-radius: 6px; padding: 10px 12px; }
.cards dt { font-size: 12px; color: #4a5568; }
.cards dd { margin: 0; font-size: 20px; font-weight: 700; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #edf2f7; text-align: left; white-space: nowrap; }
thead th { background: #f7fafc; border-bottom: 2px solid #cbd5e0; white-space: normal; vertical-align: bottom; }
th small { display: block; color: #718096; font-weight: normal; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.flagged td { background: #fff5f5; font-weight: 600; }
tr.total td { border-top: 2px solid #cbd5e0; font-weight: 700; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dl.facts dt { color: #4a5568; }
dl.facts dd { margin: 0; }
code { font-size: 12px; word-break: break-all; }
footer { color: #718096; font-size: 12px; margin-top: 20px; }
""".replace("FONTS", PAGE_FONTS)


def render_html(data: ReportData, lang: str) -> str:
    """The page: a pure function of the gathered figures and the language."""
    words = WORDS[lang]
    rules = data.ledgers.rules
    versions = ", ".join(data.statement.rule_versions) or "–"
    subtitle = (
        f"{words['as_of']} {data.as_of.isoformat()} · {words['position']} {data.position:,} · "
        f"{words['rules']} {html.escape(versions)} · {words['timezone']} {html.escape(rules.timezone)}"
    )
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{"zh-CN" if lang == "zh" else "en"}">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{words['title']} · {data.month}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<header><h1>{words['title']} · {data.month}</h1><p>{subtitle}</p></header>",
        key_figures_section(data, lang),
        ledgers_section(data, lang),
        forecast_section(data, lang),
        commission_section(data, lang),
        statement_section(data, lang),
        f"<footer>{words['footer'].format(position=f'{data.position:,}')}</footer>",
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


NUMERIC = ' class="n"'


def _figure(name: str, caption: str, svg: str) -> str:
    return f'<figure id="{name}" class="chart"><figcaption>{caption}</figcaption>{svg}</figure>'


def _table(head: Sequence[tuple[str, bool]], rows: Sequence[str], table_id: str) -> str:
    """A table: ``head`` is (escaped label, numeric?) per column; ``rows`` are ready ``<tr>``s."""
    ths = "".join(f'<th scope="col"{NUMERIC if numeric else ""}>{label}</th>' for label, numeric in head)
    return f'<div class="scroll"><table id="{table_id}"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _td(text: str, numeric: bool = True, **data: str) -> str:
    """A cell; ``data`` become ``data-*`` attributes (what the figure is, for readers and tests)."""
    attributes = (NUMERIC if numeric else "") + "".join(f' data-{k}="{esc(v)}"' for k, v in data.items())
    return f"<td{attributes}>{text}</td>"


def key_figures_section(data: ReportData, lang: str) -> str:
    words, metric = WORDS[lang], METRIC_NAMES[lang]
    group = data.ledgers.total.tally
    lead, deal = group.lead_quality(), group.deal_structure()
    owed = data.liability.totals
    day = data.as_of.isoformat()
    cards = (
        ("leads", metric["leads"], f"{lead['leads']:,}"),
        ("attended", metric["attended"], f"{lead['attended']:,}"),
        ("order_amount", metric["order_amount"], money(deal["order_amount"])),
        ("commission_total", words["commission_total"], money(data.statement.grand_total.total)),
        ("deferred_revenue", words["deferred_revenue_now"].format(day=day), money(owed.deferred_revenue)),
        ("outstanding_sessions", words["outstanding_now"].format(day=day), f"{owed.outstanding_sessions:,}"),
    )
    items = "".join(f'<div data-figure="{key}"><dt>{label}</dt><dd>{value}</dd></div>' for key, label, value in cards)
    return f'<section id="key-figures"><h2>{words["key_figures"]}</h2><dl class="cards">{items}</dl></section>'


def ledgers_section(data: ReportData, lang: str) -> str:
    words, metric_names, kind_names = WORDS[lang], METRIC_NAMES[lang], KIND_NAMES[lang]
    columns = [*data.ledgers.kinds, data.ledgers.total]
    figures = [(c.kind, _three_ledgers(c)) for c in columns]
    head = [(words["metric"], False)] + [(words["group"] if c.channel_id == "*" else html.escape(kind_names.get(c.kind, c.kind)), True) for c in columns]
    rows = [
        f'<tr><th scope="row">{metric_names[key]}</th>'
        + "".join(_td(cell(ledger[part][key], style), kind=kind, metric=key) for kind, ledger in figures)
        + "</tr>"
        for part, key, style in LEDGER_METRICS
    ]
    styles = {key: (part, style) for part, key, style in LEDGER_METRICS}
    channel_head = [(words["channel"], False), (words["kind"], False)] + [(metric_names[key], True) for key in CHANNEL_METRICS]
    channel_rows = []
    for channel in data.ledgers.channels:
        ledger = _three_ledgers(channel)
        cells = "".join(_td(cell(ledger[styles[k][0]][k], styles[k][1]), channel=channel.channel_id, metric=k) for k in CHANNEL_METRICS)
        channel_rows.append(
            f'<tr><th scope="row">{esc(channel.name or channel.channel_id)} <small>{esc(channel.channel_id)}</small></th>'
            f"{_td(html.escape(kind_names.get(channel.kind, channel.kind)), numeric=False)}{cells}</tr>"
        )
    return (
        f'<section id="ledgers"><h2>{words["ledgers"]}</h2><p class="note">{words["ledgers_note"]}</p>'
        + _figure("lead-funnel", words["funnel"], funnel_chart(data, lang))
        + _figure("no-show-reasons", words["no_show_reasons"], no_show_chart(data, lang))
        + _figure("fill-course-mix", words["mix"], mix_chart(data, lang))
        + f"<h3>{words['by_kind']}</h3>{_table(head, rows, 'ledgers-by-kind')}"
        + f"<h3>{words['by_channel']}</h3>{_table(channel_head, channel_rows, 'ledgers-by-channel')}"
        + "</section>"
    )


def forecast_section(data: ReportData, lang: str) -> str:
    words = WORDS[lang]
    report = data.liability
    note = words["forecast_note"].format(
        threshold=percent(report.rules.pressure_threshold),
        first=(data.as_of + timedelta(days=1)).isoformat(),
    )
    store_names = {b.key: b.label for b in report.by_store}
    head = [(words[k], k not in ("store", "month", "flag")) for k in ("store", "month", "days", "hours", "capacity_hours", "utilisation", "room_capacity_hours", "room_utilisation", "flag")]
    rows = []
    for row in report.forecast:
        key = {"store": row.store_id, "month": row.month}
        flag = words["over"] if row.flagged else ""
        rows.append(
            ('<tr class="flagged">' if row.flagged else "<tr>")
            + f'<th scope="row">{esc(store_names.get(row.store_id) or row.store_id)} <small>{esc(row.store_id)}</small></th>'
            + _td(row.month, numeric=False)
            + _td(str(row.days))
            + _td(money(row.hours), metric="hours", **key)
            + _td(money(row.capacity_hours), metric="capacity_hours", **key)
            + _td(percent(row.utilisation), metric="utilisation", **key)
            + _td(money(row.room_capacity_hours), metric="room_capacity_hours", **key)
            + _td(percent(row.room_utilisation), metric="room_utilisation", **key)
            + _td(flag, numeric=False, metric="flagged", **key)
            + "</tr>"
        )
    chart = _figure("forecast-heatmap", words["heatmap"], heatmap_chart(data, lang)) if report.forecast else f"<p>{words['no_forecast']}</p>"
    return (
        f'<section id="forecast"><h2>{words["forecast"]}</h2><p class="note">{note}</p>{chart}'
        f"{_table(head, rows, 'forecast-table') if rows else ''}</section>"
    )


def commission_section(data: ReportData, lang: str) -> str:
    words, parts, roles = WORDS[lang], PART_NAMES[lang], ROLE_NAMES[lang]
    statement = data.statement
    if not statement.totals:
        return f'<section id="commission"><h2>{words["commission"]}</h2><p>{words["no_commission"]}</p></section>'
    caption = words["commission_chart"]
    if len(statement.totals) > PAYEES_CHARTED:
        caption = words["commission_chart_top"].format(n=PAYEES_CHARTED)
    head = [(words["payee"], False), (words["name"], False), (words["role"], False)] + [(parts[p], True) for p in PARTS] + [(words["total"], True)]
    rows = []
    for t in statement.totals:
        staff = data.directory.staff.get(t.payee)
        role = roles.get(staff.role, staff.role) if staff else "?"
        rows.append(
            f'<tr><th scope="row">{esc(t.payee)}</th>{_td(esc(payee_name(data.directory, t.payee)), numeric=False)}'
            f"{_td(html.escape(role), numeric=False)}"
            + "".join(_td(money(getattr(t, p)), payee=t.payee, part=p) for p in PARTS)
            + _td(money(t.total), payee=t.payee, part="total")
            + "</tr>"
        )
    g = statement.grand_total
    rows.append(
        f'<tr class="total"><th scope="row">{words["total"]}</th>{_td(words["payees"].format(n=len(statement.totals)), numeric=False)}{_td("", numeric=False)}'
        + "".join(_td(money(getattr(g, p)), payee="*", part=p) for p in PARTS)
        + _td(money(g.total), payee="*", part="total")
        + "</tr>"
    )
    return (
        f'<section id="commission"><h2>{words["commission"]}</h2>'
        + _figure("commission-chart", caption, commission_chart(data, lang))
        + _table(head, rows, "commission-table")
        + "</section>"
    )


def statement_section(data: ReportData, lang: str) -> str:
    words = WORDS[lang]
    statement = data.statement
    check = statement.closed
    if check is None:
        status = words["open"]
    elif check.verified:
        status = words["closed_ok"].format(position=f"{check.closure.built_position:,}")
    else:
        status = words["closed_bad"].format(position=f"{check.closure.built_position:,}", rebuilt=check.rebuilt_digest)
    facts_shown = [
        ("month", words["month"], statement.month),
        ("status", words["status"], status),
        ("rule-versions", words["rules"], html.escape(", ".join(statement.rule_versions) or "–")),
        ("position", words["position"], f"{statement.position:,}"),
        ("lines", words["lines"], f"{len(statement.lines):,}"),
        ("digest", words["digest"], f"<code>{statement.digest}</code>"),
    ]
    if statement.adjusts:
        facts_shown.append(("adjusts", words["adjusts"], ", ".join(statement.adjusts)))
    if statement.findings:
        facts_shown.append(("findings", words["findings"], "<br>".join(esc(f) for f in statement.findings)))
    items = "".join(f'<dt>{label}</dt><dd data-fact="{key}">{value}</dd>' for key, label, value in facts_shown)
    return f'<section id="statement"><h2>{words["statement"]}</h2><dl class="facts">{items}</dl></section>'
