"""Deterministic demo data: months of a physio / sports-rehab clinic group, as SPEC §2 events.

What is generated, and why
--------------------------
1. **The group** (reference events, all dated before ``start``, emitted first): stores in one or
   more cities, each with channel agents, consultants, clinicians, a store manager and front desk;
   clinician and room capacity (``resource.declared``, weekly hours); channels of all three kinds —
   local ``medical_trust`` and ``sports_scene`` partners per city, group-wide ``online_platform``
   channels — and an exclusive QR live code (``entry_point.issued``) per store, channel and agent.
2. **Customer journeys**, each shaped by its channel kind (SPEC §1, see :data:`BEHAVIOURS`):
   lead → triage → follow-ups → assessment booking → attended / no-show / cancelled → orders
   (assessment fee, fill items, course packages) → sessions → refunds and repurchases.
   Medical-trust leads are few, slow and valuable; sports-scene leads fast and volatile;
   online-platform leads many, cheap and often no-shows.
3. **The hard cases the ledger exists for**: collisions (撞单) inside and after the 90-day
   protection (a few *returning* customers whose first lead predates the window), ownership
   transfer tickets for every trigger (approved, rejected, self-approved, ineligible), walk-ins with
   no lead, an entry point retired part-way and scanned afterwards (invalid leads), identity keys
   written in varied formats and linked by events naming two keys, split identities joined by
   ``customers.merged``, and namesakes (张伟 / 張偉, same last four phone digits) for the
   possible-duplicate report.

Scale, streaming and memory
---------------------------
About **12 events per customer** at the default three months (:data:`EVENTS_PER_CUSTOMER`;
fewer with ``months=1``, as courses are cut off by the window end). For a target event count pick
``customers ≈ events / 12``: ``customers=83_000`` gives about a million events. Unless
``stores`` is given the group has ``max(3, round(customers / 1000))`` stores (50 at 50,000).
Follow-ups are about 40 % of the events, sessions 20 %: a clinic chases its leads on WeChat.

Events are streamed, never collected. Customers are created in arrival order; each journey is a
generator that yields its events in time order, and a heap merges the live journeys
(:func:`_merge_journeys`). Memory is bounded by the customers *in flight* (about 2 KB each;
their number is the arrival rate per store × the length of a course, so it grows with the
number of stores, not with the number of events written), the group's reference data, and the
small late-arrival buffer. Measured: a million events (83 stores) in about 75 MB resident.

A few events are dated before ``start``: the reference events (a group set up 150 days earlier),
and the first lead of a few *returning* customers (100–130 days earlier) whose comeback
through another channel is a collision after the 90-day protection.

Late arrivals
-------------
About 1 % of events is held back for 1 to 36 hours of stream time and then emitted after events
that happened later (SPEC §2.2: events may arrive out of order). An event that introduces an
identity key is never held back (a later event naming only that key would otherwise start a new
customer), and a held event is released at once when something that refers to it (a session or
refund for its order, the outcome of its booking, the decision on its ticket) is about to be
written, so no reference is ever written before its definition.

Determinism
-----------
One ``random.Random(seed)`` drives everything; journeys draw from it in the order the merge
advances them, which is itself a pure function of the arguments (heap ties are broken by a
counter). No wall clock, no global random state, no set or dict iteration that could vary.
``event_id`` is ``demo-NNNNNN``, numbered in file order.
"""

from __future__ import annotations

import calendar
import heapq
import io
import json
import os
import random
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import accumulate, chain, count
from math import ceil
from typing import Any, Generic, NamedTuple, TypeVar

__all__ = ["generate", "write_jsonl", "stores_for", "EVENTS_PER_CUSTOMER"]

EVENTS_PER_CUSTOMER = 12
"""Events per customer at the default ``months=3`` (11.8–12.3 measured); ``customers ≈ events / 12``."""

MINUTES_PER_DAY = 24 * 60
CLOCK_TIMES = tuple(f"T{m // 60:02d}:{m % 60:02d}:00+08:00" for m in range(MINUTES_PER_DAY))
STORE_OPENS = 9 * 60  # 09:00
STORE_CLOSES = 21 * 60  # 21:00: last appointment starts before this
REFERENCE_DAYS_BEFORE_START = 150  # the group and its channels were set up this long before `start`
PROTECTION_DAYS = 90  # SPEC §4 default, used to place collisions after protection
LATE_SHARE = 0.012  # of the events allowed to arrive late (see LATE_CAPABLE): ≈ 1 % of all events
CENT = Decimal("0.01")

T = TypeVar("T")


class Weighted(Generic[T]):
    """A fixed table of values and weights to draw from (precomputed: drawing is one bisect)."""

    __slots__ = ("values", "_cumulative")

    def __init__(self, *pairs: tuple[T, float]) -> None:
        self.values: tuple[T, ...] = tuple(v for v, _ in pairs)
        self._cumulative = tuple(accumulate(w for _, w in pairs))

    def pick(self, rng: random.Random) -> T:
        return self.values[bisect_right(self._cumulative, rng.random() * self._cumulative[-1])]


# ---------------------------------------------------------------------------------------------
# Catalogue: places, names, channels, products (all tuples: fixed order, deterministic)
# ---------------------------------------------------------------------------------------------

CITIES: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("sh", "上海", (("jingan", "静安"), ("xuhui", "徐汇"), ("pudong", "浦东"), ("changning", "长宁"), ("yangpu", "杨浦"), ("minhang", "闵行"))),
    ("bj", "北京", (("chaoyang", "朝阳"), ("haidian", "海淀"), ("dongcheng", "东城"), ("xicheng", "西城"), ("fengtai", "丰台"), ("tongzhou", "通州"))),
    ("sz", "深圳", (("nanshan", "南山"), ("futian", "福田"), ("luohu", "罗湖"), ("baoan", "宝安"), ("longgang", "龙岗"), ("longhua", "龙华"))),
    ("gz", "广州", (("tianhe", "天河"), ("yuexiu", "越秀"), ("haizhu", "海珠"), ("panyu", "番禺"), ("baiyun", "白云"), ("huangpu", "黄埔"))),
    ("hz", "杭州", (("xihu", "西湖"), ("shangcheng", "上城"), ("gongshu", "拱墅"), ("binjiang", "滨江"), ("yuhang", "余杭"), ("xiaoshan", "萧山"))),
    ("cd", "成都", (("jinjiang", "锦江"), ("wuhou", "武侯"), ("qingyang", "青羊"), ("gaoxin", "高新"), ("chenghua", "成华"), ("jinniu", "金牛"))),
    ("nj", "南京", (("gulou", "鼓楼"), ("xuanwu", "玄武"), ("qinhuai", "秦淮"), ("jianye", "建邺"), ("jiangning", "江宁"), ("qixia", "栖霞"))),
    ("wh", "武汉", (("jianghan", "江汉"), ("wuchang", "武昌"), ("hongshan", "洪山"), ("hanyang", "汉阳"), ("jiangan", "江岸"), ("donghu", "东湖"))),
    ("su", "苏州", (("gusu", "姑苏"), ("sip", "工业园区"), ("wuzhong", "吴中"), ("xiangcheng", "相城"), ("huqiu", "虎丘"), ("wujiang", "吴江"))),
    ("xa", "西安", (("yanta", "雁塔"), ("beilin", "碑林"), ("weiyang", "未央"), ("lianhu", "莲湖"), ("qujiang", "曲江"), ("changan", "长安"))),
    ("cq", "重庆", (("yuzhong", "渝中"), ("jiangbei", "江北"), ("nanan", "南岸"), ("yubei", "渝北"), ("jiulongpo", "九龙坡"), ("shapingba", "沙坪坝"))),
    ("tj", "天津", (("heping", "和平"), ("nankai", "南开"), ("hexi", "河西"), ("hedong", "河东"), ("binhai", "滨海"), ("xiqing", "西青"))),
)

SURNAMES = (
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何",
    "高", "林", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹", "彭", "曾", "肖", "田",
    "董", "袁", "潘", "蒋", "蔡", "余", "杜", "叶", "程", "苏", "魏", "吕", "丁", "沈", "姚", "卢", "姜",
    "崔", "钟", "谭", "陆", "汪", "范", "金", "石", "廖", "贾", "夏", "韦", "方", "白", "邹", "孟", "熊",
    "秦", "邱", "江", "尹", "薛", "段", "雷", "侯", "龙", "史", "陶", "黎", "贺", "顾", "毛", "郝", "龚",
    "邵", "万", "钱", "严", "武", "戴", "莫", "孔", "向", "汤", "欧阳", "司马",
)
GIVEN_NAMES = (
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
    "超", "秀英", "霞", "平", "刚", "桂英", "华", "鑫", "婷", "浩", "宇", "欣", "悦", "晨", "子涵",
    "梓轩", "思远", "雨桐", "一鸣", "佳怡", "俊杰", "嘉欣", "志强", "晓东", "海燕", "文博", "若曦",
    "浩然", "诗琪", "子墨", "天佑", "雅婷", "建国", "丹丹", "晓雯", "凯", "琳", "博文", "欣怡", "振华",
)
COMMON_NAME_VARIANTS = (
    # simplified, traditional: the same person typed on two systems, or two different people
    ("张伟", "張偉"), ("王丽", "王麗"), ("刘洋", "劉洋"), ("陈静", "陳靜"), ("杨帆", "楊帆"),
    ("赵磊", "趙磊"), ("黄婷", "黃婷"), ("吴军", "吳軍"), ("孙悦", "孫悅"), ("郑浩", "鄭浩"),
)
MOBILE_PREFIXES = (
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "153", "155",
    "156", "157", "158", "159", "166", "176", "177", "180", "181", "182", "183", "185", "186", "187",
    "188", "189", "191", "198", "199",
)


@dataclass(frozen=True)
class ChannelTemplate:
    """A kind of partner; a city gets one channel of each local template."""

    slug: str
    kind: str
    name: str  # `{city}` is replaced by the city's name
    partner: str
    weight: float  # how often a lead of this kind comes through this channel


CHANNEL_TEMPLATES: tuple[ChannelTemplate, ...] = (
    ChannelTemplate("ortho", "medical_trust", "{city}第六人民医院骨科转介", "{city}市第六人民医院 骨科门诊", 3),
    ChannelTemplate("sportsmed", "medical_trust", "{city}体育医院运动医学科", "{city}体育医院 运动医学科 医生推荐", 3),
    ChannelTemplate("pain", "medical_trust", "{city}安康疼痛诊所", "安康疼痛诊所 主任医师", 2),
    ChannelTemplate("checkup", "medical_trust", "{city}瑞康体检中心", "瑞康体检中心 健康管理部", 2),
    ChannelTemplate("peer", "medical_trust", "{city}同行治疗师转介", "独立执业物理治疗师", 1),
    ChannelTemplate("gym", "sports_scene", "{city}铁馆健身", "铁馆健身连锁 私教部", 4),
    ChannelTemplate("yoga", "sports_scene", "{city}莲心瑜伽馆", "莲心瑜伽 馆长", 2),
    ChannelTemplate("run", "sports_scene", "{city}晨风跑团", "晨风跑团 团长", 2),
    ChannelTemplate("college", "sports_scene", "{city}体育学院", "{city}体育学院 田径队队医", 1),
    ChannelTemplate("community", "sports_scene", "{city}膝友会病友群", "膝友会 群主", 1),
)
ONLINE_TEMPLATES: tuple[ChannelTemplate, ...] = (
    ChannelTemplate("douyin", "online_platform", "抖音本地生活", "抖音生活服务 团购", 4),
    ChannelTemplate("meituan", "online_platform", "美团", "美团 到店综合", 3),
    ChannelTemplate("dianping", "online_platform", "大众点评", "大众点评 商户通", 2),
    ChannelTemplate("xiaohongshu", "online_platform", "小红书", "小红书 笔记种草 + 私信", 2),
)
PAID_VIA_FOR_PLATFORM = {
    "douyin": "douyin", "meituan": "meituan", "dianping": "dianping",
    "xiaohongshu": "mini_program",  # no checkout of its own: the customer pays in the WeChat mini-program
}


@dataclass(frozen=True)
class Complaint:
    """What hurts: intake pain site, the body region (names the package), likely diagnoses."""

    pain_site: str
    region: str
    injuries: tuple[str, ...]


COMPLAINTS: tuple[Complaint, ...] = (
    Complaint("左膝", "knee", ("半月板损伤", "髌腱炎", "前交叉韧带重建术后", "髌股疼痛综合征")),
    Complaint("右膝", "knee", ("半月板损伤", "髌腱炎", "前交叉韧带重建术后", "髌股疼痛综合征")),
    Complaint("腰背部", "spine", ("腰椎间盘突出", "腰肌劳损", "骶髂关节紊乱")),
    Complaint("颈肩", "spine", ("颈椎病", "肌筋膜疼痛")),
    Complaint("右肩", "shoulder", ("肩袖损伤", "肩峰撞击综合征", "冻结肩")),
    Complaint("左肩", "shoulder", ("肩袖损伤", "肩峰撞击综合征")),
    Complaint("左踝", "ankle", ("踝关节扭伤", "跟腱炎")),
    Complaint("右踝", "ankle", ("踝关节扭伤", "跟腱炎")),
    Complaint("足底", "ankle", ("足底筋膜炎",)),
    Complaint("髋部", "hip", ("髋关节撞击综合征", "梨状肌综合征")),
    Complaint("大腿后侧", "hip", ("腘绳肌拉伤",)),
    Complaint("右肘", "elbow", ("网球肘", "高尔夫球肘")),
)
SPORTS_ACTIVE = ("跑步", "篮球", "足球", "羽毛球", "网球", "健身", "游泳", "骑行", "登山", "滑雪", "飞盘", "瑜伽")
SPORTS_CASUAL = ("无", "散步", "广场舞", "太极", "瑜伽", "游泳", "跑步")

NO_SHOW_REASONS = (
    "schedule_conflict", "cost_concern", "unsure_of_value", "symptoms_improved",
    "chose_competitor", "unreachable", "other",
)
TRANSFER_TRIGGERS = ("followup_timeout", "customer_request", "cross_store")


@dataclass(frozen=True)
class Product:
    """One order line (SPEC §2 `order.paid` item)."""

    sku: str
    product_class: str
    sessions: int
    session_minutes: int
    amount: Decimal
    cost: Decimal | None

    def as_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "sku": self.sku,
            "product_class": self.product_class,
            "sessions": self.sessions,
            "session_minutes": self.session_minutes,
            "amount": money(self.amount),
        }
        if self.cost is not None:
            item["cost"] = money(self.cost)
        return item


# ---------------------------------------------------------------------------------------------
# How each channel kind behaves (SPEC §1)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelBehaviour:
    """The shape of a journey that starts in a channel of this kind. Times in days unless named."""

    kind: str
    share: float  # of new customers
    scan_share: float  # lead via QR scan; the rest via `other_via`
    other_via: str  # "manual" (a referral phoned in) or "platform" (the platform pushes the lead)
    triage_rate: float
    offline_route_rate: float  # route offline_assessment, else online_screening
    booking_rate: float  # of the offline-routed; online-screened book at half this rate
    followups_before_booking: tuple[int, int]
    days_to_booking: tuple[float, float]
    days_to_slot: tuple[float, float]
    slot_minutes: tuple[int, ...]
    outcomes: Weighted[str]  # attended, no_show, cancelled
    no_show_reasons: Weighted[str]
    voucher_rate: float  # buys a cheap assessment voucher on the platform before booking
    assessment_fees: tuple[Decimal, ...]  # fee paid at the visit; empty: the assessment is free
    assessment_fee_rate: float
    conversion_rate: float  # buys a plan after an attended assessment
    within_24h_share: float  # of the conversions: decided in the 24 h window
    package_rate: float  # a plan is a course package (else fill items only)
    package_sessions: Weighted[int]
    session_price: tuple[int, int]  # yuan per package session, drawn in steps of 10
    session_minutes: int
    package_validity_days: int
    platform_payment_rate: float  # the plan is paid through the platform
    sessions_per_week: tuple[float, float]
    dropout_per_session: float
    repurchase_rate: float
    collision_rate: float


def _d(*values: str) -> tuple[Decimal, ...]:
    return tuple(Decimal(v) for v in values)


def _outcomes(attended: float, no_show: float, cancelled: float) -> Weighted[str]:
    return Weighted(("attended", attended), ("no_show", no_show), ("cancelled", cancelled))


def _no_show_reasons(*weights: float) -> Weighted[str]:
    return Weighted(*zip(NO_SHOW_REASONS, weights))


BEHAVIOURS: dict[str, ChannelBehaviour] = {
    "medical_trust": ChannelBehaviour(
        kind="medical_trust", share=0.20, scan_share=0.55, other_via="manual",
        triage_rate=0.97, offline_route_rate=0.95, booking_rate=0.92,
        followups_before_booking=(2, 5), days_to_booking=(1.0, 5.0), days_to_slot=(2.0, 7.0), slot_minutes=(60,),
        outcomes=_outcomes(0.86, 0.08, 0.06), no_show_reasons=_no_show_reasons(4, 1, 1, 3, 0.5, 1, 1),
        voucher_rate=0.0, assessment_fees=_d("398", "498"), assessment_fee_rate=0.9,
        conversion_rate=0.78, within_24h_share=0.6, package_rate=0.85,
        package_sessions=Weighted((12, 3), (16, 2), (20, 3), (24, 2)), session_price=(480, 620), session_minutes=60,
        package_validity_days=180, platform_payment_rate=0.0, sessions_per_week=(1.5, 2.5),
        dropout_per_session=0.02, repurchase_rate=0.35, collision_rate=0.04,
    ),
    "sports_scene": ChannelBehaviour(
        kind="sports_scene", share=0.28, scan_share=0.9, other_via="manual",
        triage_rate=0.92, offline_route_rate=0.85, booking_rate=0.85,
        followups_before_booking=(1, 3), days_to_booking=(0.0, 2.0), days_to_slot=(0.5, 3.0), slot_minutes=(45,),
        outcomes=_outcomes(0.72, 0.18, 0.10), no_show_reasons=_no_show_reasons(3, 2, 2, 2, 1, 1, 1),
        voucher_rate=0.0, assessment_fees=_d("199"), assessment_fee_rate=0.4,
        conversion_rate=0.64, within_24h_share=0.7, package_rate=0.6,
        package_sessions=Weighted((10, 4), (12, 3), (20, 2)), session_price=(380, 480), session_minutes=50,
        package_validity_days=120, platform_payment_rate=0.05, sessions_per_week=(2.0, 3.0),
        dropout_per_session=0.045, repurchase_rate=0.25, collision_rate=0.07,
    ),
    "online_platform": ChannelBehaviour(
        kind="online_platform", share=0.45, scan_share=0.35, other_via="platform",
        triage_rate=0.85, offline_route_rate=0.7, booking_rate=0.8,
        followups_before_booking=(1, 4), days_to_booking=(0.0, 3.0), days_to_slot=(1.0, 5.0), slot_minutes=(30, 45),
        outcomes=_outcomes(0.52, 0.38, 0.10), no_show_reasons=_no_show_reasons(2, 3, 3, 1, 2, 4, 1),
        voucher_rate=0.7, assessment_fees=_d("99"), assessment_fee_rate=0.5,
        conversion_rate=0.45, within_24h_share=0.5, package_rate=0.3,
        package_sessions=Weighted((6, 3), (10, 4), (12, 1)), session_price=(298, 388), session_minutes=50,
        package_validity_days=90, platform_payment_rate=0.55, sessions_per_week=(1.5, 3.0),
        dropout_per_session=0.06, repurchase_rate=0.15, collision_rate=0.06,
    ),
}
CLINICIAN_HOURS = (20, 20, 20, 16, 12)  # bookable treatment hours a week (not working hours): most full-time, some part-time
WALK_IN_SHARE = 0.08  # of customers arriving in opening hours (≈7 % of all): no lead at all (自然到店)
LEAD_KINDS = Weighted(*((kind, b.share) for kind, b in BEHAVIOURS.items()))


# ---------------------------------------------------------------------------------------------
# The group: stores, staff, channels, entry points, rooms
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    store_id: str
    name: str
    city_code: str
    city_name: str


@dataclass(frozen=True)
class StaffMember:
    staff_id: str
    name: str
    role: str
    store_id: str


@dataclass(frozen=True)
class Channel:
    channel_id: str
    name: str
    kind: str
    partner: str
    slug: str
    weight: float


@dataclass(frozen=True)
class EntryPoint:
    entry_point_id: str
    channel: Channel
    owner: StaffMember
    store_id: str


@dataclass(frozen=True)
class Room:
    room_id: str
    store_id: str
    weekly_hours: int


@dataclass(frozen=True)
class StoreTeam:
    """One store and everyone and everything in it."""

    index: int
    store: Store
    agents: tuple[StaffMember, ...]
    consultants: tuple[StaffMember, ...]
    clinicians: tuple[tuple[StaffMember, int], ...]  # with weekly hours
    manager: StaffMember
    front_desk: tuple[StaffMember, ...]
    rooms: tuple[Room, ...]
    channels: dict[str, tuple[Channel, ...]]  # kind -> channels this store takes leads from
    channel_mix: dict[str, Weighted[Channel]]  # kind -> which channel a lead of that kind came through
    entry_points: dict[str, tuple[EntryPoint, ...]]  # channel_id -> live codes (never the retired one)

    @property
    def store_id(self) -> str:
        return self.store.store_id

    def staff(self) -> tuple[StaffMember, ...]:
        return (*self.agents, *self.consultants, *(c for c, _ in self.clinicians), self.manager, *self.front_desk)


@dataclass(frozen=True)
class Group:
    """The clinic group as registered before the demo window opens."""

    teams: tuple[StoreTeam, ...]
    channels: tuple[Channel, ...]
    retired_entry_point: EntryPoint  # an old poster code, retired part-way through the window
    retired_at: int  # minutes since window start


def stores_for(customers: int) -> int:
    """The default number of stores: about one per thousand customers, at least three."""
    return max(3, round(customers / 1000))


def _team_size(per_month: float, per_head: float, minimum: int) -> int:
    return max(minimum, ceil(per_month / per_head))


def _build_group(rng: random.Random, n_stores: int, customers: int, months: int, window_minutes: int) -> Group:
    names = _NameBook(rng)
    per_store_month = customers / n_stores / months
    # fill one city before the next: nearby stores make cross-store transfers plausible
    slots = [(code, city, d_code, d_name, round_) for round_ in range(1 + n_stores // 72)
             for code, city, districts in CITIES for d_code, d_name in districts]
    local_channels: dict[str, tuple[Channel, ...]] = {}
    online = tuple(Channel(f"ol-{t.slug}", t.name, t.kind, t.partner, t.slug, t.weight) for t in ONLINE_TEMPLATES)
    teams: list[StoreTeam] = []
    for index in range(n_stores):
        city_code, city_name, d_code, d_name, round_ = slots[index]
        suffix = f"-{round_ + 1}" if round_ else ""
        ordinal = "二三四五六七八九"[round_ - 1] if round_ else ""  # a second store in the district: 静安二店
        store = Store(f"{city_code}-{d_code}{suffix}", f"{city_name}{d_name}{ordinal}店", city_code, city_name)
        sid = store.store_id
        if city_code not in local_channels:
            local_channels[city_code] = tuple(
                Channel(f"{city_code}-{t.slug}", t.name.format(city=city_name), t.kind,
                        t.partner.format(city=city_name), t.slug, t.weight)
                for t in CHANNEL_TEMPLATES
            )
        agents = tuple(StaffMember(f"{sid}-ag{n}", names.staff(), "channel_agent", sid)
                       for n in range(1, _team_size(per_store_month, 80, 2) + 1))
        consultants = tuple(StaffMember(f"{sid}-cs{n}", names.staff(), "consultant", sid)
                            for n in range(1, _team_size(per_store_month, 100, 2) + 1))
        clinicians = tuple((StaffMember(f"{sid}-pt{n}", names.staff(), "clinician", sid), _one_of(rng, CLINICIAN_HOURS))
                           for n in range(1, _team_size(per_store_month, 26, 3) + 1))
        manager = StaffMember(f"{sid}-sm", names.staff(), "store_manager", sid)
        front_desk = tuple(StaffMember(f"{sid}-fd{n}", names.staff(), "front_desk", sid)
                           for n in range(1, _team_size(per_store_month, 200, 1) + 1))
        rooms = tuple(Room(f"{sid}-room{n}", sid, 84) for n in range(1, ceil(len(clinicians) / 2) + 2))
        channels = (*local_channels[city_code], *online)
        by_kind = {kind: tuple(c for c in channels if c.kind == kind) for kind in BEHAVIOURS}
        entry_points: dict[str, tuple[EntryPoint, ...]] = {}
        for n, channel in enumerate(channels):
            codes = [EntryPoint(f"qr-{sid}-{channel.slug}-1", channel, agents[n % len(agents)], sid)]
            if channel.weight >= 4 and len(agents) >= 3:  # busy channels: a second agent has a code too
                codes.append(EntryPoint(f"qr-{sid}-{channel.slug}-2", channel, agents[(n + 1) % len(agents)], sid))
            entry_points[channel.channel_id] = tuple(codes)
        mix = {kind: Weighted(*((c, c.weight) for c in by_kind[kind])) for kind in BEHAVIOURS}
        teams.append(StoreTeam(index, store, agents, consultants, clinicians, manager, front_desk, rooms, by_kind, mix,
                               entry_points))
    first = teams[0]
    gym = next(c for c in first.channels["sports_scene"] if c.slug == "gym")
    retired = EntryPoint(f"qr-{first.store_id}-gym-poster2025", gym, first.agents[0], first.store_id)
    retired_at = _at_store_hours(int(window_minutes * 0.4), rng)
    all_channels = tuple(c for city in local_channels.values() for c in city) + online
    return Group(tuple(teams), all_channels, retired, retired_at)


def _reference_drafts(group: Group) -> Iterator[Draft]:
    """Everything later events refer to, in the order a group sets it up, well before the window:
    stores, then staff, channels, live codes, and capacity."""
    day0 = -REFERENCE_DAYS_BEFORE_START * MINUTES_PER_DAY
    for team in group.teams:
        yield Draft(day0 + 9 * 60 + team.index, "store.registered",
                    {"store_id": team.store_id, "name": team.store.name})
    for team in group.teams:
        for member in team.staff():
            yield Draft(day0 + MINUTES_PER_DAY + 9 * 60 + team.index, "staff.registered", {
                "staff_id": member.staff_id, "name": member.name, "role": member.role, "store_id": member.store_id})
    for channel in group.channels:
        yield Draft(day0 + 2 * MINUTES_PER_DAY + 10 * 60, "channel.registered", {
            "channel_id": channel.channel_id, "name": channel.name, "kind": channel.kind, "partner": channel.partner})
    for team in group.teams:
        codes = [ep for codes in team.entry_points.values() for ep in codes]
        if team.index == 0:
            codes.append(group.retired_entry_point)
        for ep in codes:
            yield Draft(day0 + 2 * MINUTES_PER_DAY + 11 * 60 + team.index, "entry_point.issued", {
                "entry_point_id": ep.entry_point_id, "channel_id": ep.channel.channel_id,
                "owner_staff_id": ep.owner.staff_id, "store_id": ep.store_id})
    for team in group.teams:
        at = day0 + 3 * MINUTES_PER_DAY + 9 * 60 + team.index
        for clinician, hours in team.clinicians:
            yield Draft(at, "resource.declared", {"resource_id": clinician.staff_id, "kind": "clinician",
                                                  "store_id": team.store_id, "weekly_hours": hours})
        for room in team.rooms:
            yield Draft(at, "resource.declared", {"resource_id": room.room_id, "kind": "room",
                                                  "store_id": team.store_id, "weekly_hours": room.weekly_hours})


def _housekeeping(group: Group) -> Iterator[Draft]:
    """Group events that belong to no customer: the old gym poster's code is retired."""
    yield Draft(group.retired_at, "entry_point.retired", {"entry_point_id": group.retired_entry_point.entry_point_id})


# ---------------------------------------------------------------------------------------------
# Customers and their identity keys
# ---------------------------------------------------------------------------------------------


class _NameBook:
    """Chinese personal names; a few very common ones so namesakes happen."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def staff(self) -> str:
        return self._rng.choice(SURNAMES) + self._rng.choice(GIVEN_NAMES)

    def customer(self) -> str:
        if self._rng.random() < 0.05:
            return self._rng.choice(COMMON_NAME_VARIANTS)[0]
        return self._rng.choice(SURNAMES) + self._rng.choice(GIVEN_NAMES)


@dataclass(frozen=True)
class Customer:
    """A person as the world knows them; the ledger only ever sees the keys events name."""

    number: int
    name: str
    phone: str  # 11 digits
    wechat_id: str | None
    store_index: int
    arrival: int  # minutes since window start of the first event
    entry: str  # "lead", "walk_in", "returning" (first lead before the window), "old_poster"
    kind: str | None  # channel kind of the first lead
    channel: Channel | None

    def platform_user(self, platform: str) -> str:
        """The customer's account on a platform, e.g. ``douyin:1234567`` (unique per customer)."""
        return f"{platform}:{1_000_000 + (self.number * 7919 + 271) % 9_000_000}"


def _phone_for(number: int, salt: int) -> str:
    """A unique mainland mobile per customer: a bijection of the customer number (first body digit 0-8)."""
    body = (number * 7919 + salt) % 90_000_000
    return MOBILE_PREFIXES[(number * 13 + salt) % len(MOBILE_PREFIXES)] + f"{body:08d}"


def _namesake_phone(original: str, k: int) -> str:
    """Another person's phone sharing the last four digits (first body digit 9: never a regular phone)."""
    return MOBILE_PREFIXES[(k * 7 + 3) % len(MOBILE_PREFIXES)] + f"9{k % 1000:03d}" + original[-4:]


def _wechat_for(number: int, salt: int) -> str:
    value = (number * 104_729 + salt) % 36 ** 8
    token = ""
    for _ in range(8):
        value, digit = divmod(value, 36)
        token += "0123456789abcdefghijklmnopqrstuvwxyz"[digit]
    return f"wxid_{token}"


def format_phone(digits: str, style: int) -> str:
    """The ways front desks and platforms write the same mobile (SPEC §2 accepts them all):
    0 ``18612345678``, 1 ``186 1234 5678``, 2 ``+86 186-1234-5678``, 3 ``008618612345678``,
    4 ``+8618612345678``, 5 ``186-1234-5678``."""
    if style == 0:
        return digits
    if style == 3:
        return "0086" + digits
    if style == 4:
        return "+86" + digits
    a, b, c = digits[:3], digits[3:7], digits[7:]
    if style == 1:
        return f"{a} {b} {c}"
    if style == 2:
        return f"+86 {a}-{b}-{c}"
    return f"{a}-{b}-{c}"


class _CustomerSource:
    """New customers in arrival order: a few returning ones first (their first lead predates the
    window), then the window's customers spread over the opening hours of each day."""

    def __init__(self, world: World, customers: int) -> None:
        self.world = world
        self.rng = world.rng
        self.total = customers
        self.returning = min(customers, max(3, customers // 150)) if customers >= 20 else 0
        self.names = _NameBook(world.rng)
        self.salt = self.rng.randrange(1_000_000)
        self.recent: dict[int, deque[tuple[str, str]]] = {}  # store -> last customers' (name, phone)
        self.namesakes = 0
        self.old_poster_scans = 0
        # the flagship (first) store is busier than the others
        self._stores = Weighted(*((t.index, 1.5 if t.index == 0 else 1.0) for t in world.group.teams))

    def __iter__(self) -> Iterator[Customer]:
        rng = self.rng
        for n in range(self.returning):
            # first lead between 130 and 95 days before the window; the comeback falls in it
            span = 35 * MINUTES_PER_DAY
            at = -130 * MINUTES_PER_DAY + (n + rng.random()) * span // self.returning
            yield self._customer(n, _at_store_hours(int(at), rng), "returning")
        in_window = self.total - self.returning
        open_minutes = 14 * 60  # leads come in between 08:00 and 22:00
        total_open = self.world.window_days * open_minutes
        for i in range(in_window):
            pos = int((i + rng.random()) * total_open / in_window)
            at = (pos // open_minutes) * MINUTES_PER_DAY + 8 * 60 + pos % open_minutes
            yield self._customer(self.returning + i, at, self._entry(at))

    def _entry(self, at: int) -> str:
        """How the customer first shows up. Walk-ins only while the store is open (so every customer's
        first event falls inside the window); the first few after the old gym poster's code was
        retired scan it anyway."""
        if at > self.world.group.retired_at and self.old_poster_scans < 3:
            self.old_poster_scans += 1
            return "old_poster"
        store_open = STORE_OPENS <= at % MINUTES_PER_DAY < STORE_CLOSES
        return "walk_in" if store_open and self.rng.random() < WALK_IN_SHARE else "lead"

    def _customer(self, number: int, arrival: int, entry: str) -> Customer:
        rng = self.rng
        group = self.world.group
        store_index = 0 if entry == "old_poster" else self._stores.pick(rng)
        team = group.teams[store_index]
        kind: str | None = None
        channel: Channel | None = None
        if entry == "old_poster":
            kind, channel = "sports_scene", group.retired_entry_point.channel
        elif entry != "walk_in":
            kind = LEAD_KINDS.pick(rng)
            channel = team.channel_mix[kind].pick(rng)
        name = self.names.customer()
        phone = _phone_for(number, self.salt)
        recent = self.recent.setdefault(store_index, deque(maxlen=12))
        if recent and rng.random() < 0.015:  # a namesake of a recent customer of the same store
            other_name, other_phone = _one_of(rng, recent)
            variants = {s: t for s, t in COMMON_NAME_VARIANTS}
            name = variants.get(other_name, other_name) if rng.random() < 0.5 else other_name
            self.namesakes += 1
            phone = _namesake_phone(other_phone, self.namesakes)
        recent.append((name, phone))
        wechat = _wechat_for(number, self.salt) if rng.random() < 0.8 else None
        return Customer(number, name, phone, wechat, store_index, arrival, entry, kind, channel)


# ---------------------------------------------------------------------------------------------
# Small helpers: time, money, choice
# ---------------------------------------------------------------------------------------------


def money(value: Decimal) -> str:
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))


def _at_store_hours(at: int, rng: random.Random) -> int:
    """`at`, or soon after the store next opens (never earlier: journeys only move forward)."""
    minute = at % MINUTES_PER_DAY
    if minute < STORE_OPENS:
        return at - minute + STORE_OPENS + int(rng.random() * 150)
    if minute >= STORE_CLOSES:
        return at - minute + MINUTES_PER_DAY + STORE_OPENS + int(rng.random() * 150)
    return at


def _one_of(rng: random.Random, options: Sequence[T]) -> T:
    """A uniform choice (like ``rng.choice``, cheaper: this is called for most events)."""
    return options[int(rng.random() * len(options))]


class Coverage:
    """Makes sure every case of a small vocabulary shows up even in a small demo.

    ``claim`` answers True the first `times` times it is asked about a value, so a rare scenario is
    forced that often and otherwise left to its own odds; ``pick`` prefers values not picked yet,
    then follows the weights."""

    def __init__(self) -> None:
        self._claims: dict[tuple[str, Any], int] = {}

    def claim(self, category: str, value: Any, times: int = 1) -> bool:
        key = (category, value)
        claimed = self._claims.get(key, 0)
        if claimed >= times:
            return False
        self._claims[key] = claimed + 1
        return True

    def pick(self, rng: random.Random, category: str, table: Weighted[T]) -> T:
        for value in table.values:
            if self.claim(category, value):
                return value
        return table.pick(rng)


# ---------------------------------------------------------------------------------------------
# Drafts, the world a journey lives in
# ---------------------------------------------------------------------------------------------


class Draft(NamedTuple):
    """An event before it gets its event_id and its place in the file (a tuple: cheap to make)."""

    at: int  # occurred_at, minutes since `start` 00:00 +08:00
    type: str
    body: dict[str, Any]
    may_be_late: bool = False


@dataclass
class World:
    """Shared state of one generation run: the group, the random source, id counters."""

    rng: random.Random
    group: Group
    window_days: int
    start: date
    coverage: Coverage = field(default_factory=Coverage)
    _ids: dict[str, count] = field(default_factory=dict)
    _days: dict[int, str] = field(default_factory=dict)

    def next_id(self, prefix: str) -> str:
        """Readable ids per kind: ``so-000001`` (orders), ``ap-`` (appointments), ``rf-``, ``tk-``."""
        counter = self._ids.setdefault(prefix, count(1))
        return f"{prefix}-{next(counter):06d}"

    def day(self, at: int, plus_days: int = 0) -> str:
        """The calendar date (YYYY-MM-DD) `plus_days` after the moment `at`."""
        day = at // MINUTES_PER_DAY + plus_days
        text = self._days.get(day)
        if text is None:  # one entry per calendar day: bounded by the window
            text = self._days[day] = (self.start + timedelta(days=day)).isoformat()
        return text

    def iso(self, at: int) -> str:
        """`at` (minutes since `start` 00:00 China time) as ISO 8601 with the +08:00 offset."""
        return self.day(at) + CLOCK_TIMES[at % MINUTES_PER_DAY]


LATE_CAPABLE = frozenset({
    "lead.triaged", "followup.logged", "assessment.attended", "assessment.no_show", "assessment.cancelled",
    "order.paid", "session.delivered", "order.refunded", "ownership.transfer_decided",
})


@dataclass(slots=True)
class _Order:
    """A paid order as the journey remembers it: what is left to deliver and to refund."""

    order_id: str
    products: tuple[Product, ...]
    valid_until: int | None  # last minute a session may be delivered
    refunded: Decimal = Decimal("0")
    refunded_by_sku: dict[str, Decimal] = field(default_factory=dict)

    @property
    def amount(self) -> Decimal:
        return sum((p.amount for p in self.products), Decimal("0"))

    @property
    def items_with_sessions(self) -> int:
        return sum(1 for p in self.products if p.sessions)


@dataclass(slots=True)
class _OpenItem:
    """A sold line with sessions (journey-local bookkeeping)."""

    order: _Order
    product: Product
    left: int

    @property
    def session_value(self) -> Decimal:
        return self.product.amount / self.product.sessions


# ---------------------------------------------------------------------------------------------
# A customer's journey
# ---------------------------------------------------------------------------------------------


class Journey:
    """One customer's events, in time order. Each phase is a generator; the merge interleaves
    journeys, and the window end cuts a journey off (later events never happen)."""

    __slots__ = ("w", "rng", "c", "now", "team", "channel", "behaviour", "platform", "owner", "announced",
                 "clinician", "complaint", "items", "last_followup", "_last_at")

    def __init__(self, world: World, customer: Customer) -> None:
        self.w = world
        self.rng = world.rng
        self.c = customer
        self.now = customer.arrival
        self.team = world.group.teams[customer.store_index]
        self.channel = customer.channel
        self.behaviour = BEHAVIOURS[customer.kind or "sports_scene"]
        self.platform = self._platform_of(customer.channel)
        self.owner: StaffMember | None = None  # who follows the customer up
        self.announced: list[str] = []  # identity key kinds the ledger has seen for this customer
        self.clinician = self._any_clinician()
        self.complaint = _one_of(self.rng, COMPLAINTS)
        self.items: list[_OpenItem] = []
        self.last_followup = -10 ** 9
        self._last_at = -10 ** 9

    # -- plumbing ------------------------------------------------------------------------------

    def _advance(self, minutes: float, store_hours: bool = True) -> int:
        self.now += max(0, int(minutes))
        if store_hours:
            self.now = _at_store_hours(self.now, self.rng)
        return self.now

    def _days(self, lo: float, hi: float) -> int:
        return self._advance(self.rng.uniform(lo, hi) * MINUTES_PER_DAY)

    def _hours(self, lo: float, hi: float, store_hours: bool = True) -> int:
        return self._advance(self.rng.uniform(lo, hi) * 60, store_hours)

    def _event(self, type_: str, body: dict[str, Any], fresh_keys: bool = False) -> Draft:
        if self.now < self._last_at:
            raise AssertionError(f"journey went back in time at {type_}")
        self._last_at = self.now
        return Draft(self.now, type_, body, type_ in LATE_CAPABLE and not fresh_keys)

    @staticmethod
    def _platform_of(channel: Channel | None) -> str | None:
        return channel.slug if channel is not None and channel.kind == "online_platform" else None

    def _person(self, *kinds: str, name: bool = False) -> tuple[dict[str, Any], bool]:
        """A `person` naming the given keys, and whether it introduces a key the ledger has not seen."""
        person: dict[str, Any] = {}
        for kind in ("phone", "wechat_id", "platform_user"):
            if kind in kinds:
                person[kind] = self._key_value(kind)
        if name or ("phone" in kinds and "phone" not in self.announced):
            person["name"] = self.c.name  # whoever first takes the phone number asks for the name too
        fresh = False
        for kind in kinds:
            if kind not in self.announced:
                self.announced.append(kind)
                fresh = True
        return person, fresh

    def _key_value(self, kind: str) -> str:
        if kind == "phone":
            return format_phone(self.c.phone, PHONE_STYLES.pick(self.rng))
        if kind == "wechat_id":
            assert self.c.wechat_id is not None
            return self.c.wechat_id
        return self.c.platform_user(self.platform or "douyin")

    def _known(self) -> dict[str, Any]:
        """A person naming keys the ledger already knows (usually one, sometimes two)."""
        known = self.announced
        if len(known) > 1 and self.rng.random() < 0.2:
            return self._person(*self.rng.sample(known, 2))[0]
        kind = "phone" if "phone" in known and self.rng.random() < 0.7 else _one_of(self.rng, known)
        return self._person(kind)[0]

    def _linking(self, new_kind: str, name: bool = False) -> tuple[dict[str, Any], bool]:
        """A person naming a known key and a new one: the event links them (SPEC §3)."""
        known = "phone" if "phone" in self.announced else self.announced[0]
        return self._person(known, new_kind, name=name)

    def _any_clinician(self) -> StaffMember:
        return _one_of(self.rng, self.team.clinicians)[0]

    def _consultant(self) -> StaffMember:
        return _one_of(self.rng, self.team.consultants)

    def _front_desk(self) -> StaffMember:
        return _one_of(self.rng, self.team.front_desk)

    # -- the whole journey -----------------------------------------------------------------------

    def events(self) -> Iterator[Draft]:
        if self.c.entry == "walk_in":
            yield from self._walk_in()
            return
        if self.c.entry == "returning":
            yield from self._cold_first_lead()
        yield from self._capture()
        voucher = None
        if self.rng.random() < self.behaviour.voucher_rate:
            voucher = yield from self._buy_voucher()
        routed_offline = True
        if self.rng.random() < self.behaviour.triage_rate:
            routed_offline = yield from self._triage()
        yield from self._nurture()
        if self.rng.random() >= self.behaviour.booking_rate * (1 if routed_offline else 0.5):
            yield from self._lost_lead(voucher)
            return
        visit_end = yield from self._assessment()
        if visit_end is None:
            yield from self._lost_lead(voucher)
            return
        yield from self._visit(voucher, visit_end)
        yield from self._deal()
        yield from self._course()

    # -- lead --------------------------------------------------------------------------------------

    def _cold_first_lead(self) -> Iterator[Draft]:
        """A returning customer: a lead months ago that went cold. They come back through another
        channel after protection ended: a collision outside protection."""
        first = self.channel
        assert first is not None
        ep = _one_of(self.rng, self.team.entry_points[first.channel_id])
        self.owner = ep.owner
        person, fresh = self._person("phone", name=True)
        yield self._scan(ep, person, fresh)
        yield from self._triage()
        self._days(1, 4)
        yield self._followup(self.owner)
        comeback = self.rng.randrange(0, max(1, self.w.window_days * 6 // 10)) * MINUTES_PER_DAY + 10 * 60
        self.now = _at_store_hours(max(self.now + (PROTECTION_DAYS + 1) * MINUTES_PER_DAY, comeback), self.rng)
        self.channel = _one_of(self.rng, [c for kind in BEHAVIOURS for c in self.team.channels[kind]
                                        if c.channel_id != first.channel_id])
        self.behaviour = BEHAVIOURS[self.channel.kind]
        self.platform = self._platform_of(self.channel)

    def _capture(self) -> Iterator[Draft]:
        """`lead.captured`: a QR scan (the code's owner gets the lead), or a referral recorded by hand,
        or a lead pushed by the platform."""
        channel, b, rng = self.channel, self.behaviour, self.rng
        assert channel is not None
        codes = self.team.entry_points.get(channel.channel_id, ())
        if self.c.entry == "old_poster":
            yield from self._scan_of_retired_code()
            return
        if rng.random() < b.scan_share:
            ep = _one_of(rng, codes)
            self.owner = ep.owner
            keys = ["wechat_id" if self.c.wechat_id else "phone"]
            if "phone" not in keys and ("phone" in self.announced or rng.random() < 0.3):
                keys.append("phone")  # the landing page asked for a phone too
            person, fresh = self._person(*keys, name=rng.random() < 0.3)
            body = {"person": person, "via": "scan", "entry_point_id": ep.entry_point_id}
        else:
            self.owner = codes[0].owner  # the agent who looks after this partner in the store
            if b.other_via == "platform":
                keys = ["platform_user"]
                if "phone" in self.announced or rng.random() < 0.4:
                    keys.append("phone")
                person, fresh = self._person(*keys)
            else:
                person, fresh = self._person("phone", name=True)
            body = {"person": person, "via": b.other_via, "channel_id": channel.channel_id,
                    "recorded_by": self.owner.staff_id}
        yield self._event("lead.captured", body, fresh)
        if self.c.entry == "lead" and rng.random() < 0.02:
            # the same customer scans the same code again: a repeat, not a collision
            self._days(0.5, 2)
            ep = next((e for e in codes if e.owner == self.owner), codes[0])
            yield self._scan(ep)

    def _scan_of_retired_code(self) -> Iterator[Draft]:
        """The gym never took the old poster down: a scan of a retired code is an invalid lead.
        The agent then records the lead by hand, which is valid."""
        ep = self.w.group.retired_entry_point
        assert self.channel is not None
        person, fresh = self._person("wechat_id" if self.c.wechat_id else "phone")
        yield self._scan(ep, person, fresh)
        self._hours(0.5, 6)
        self.owner = ep.owner
        if "phone" in self.announced:
            person, fresh = self._person("phone", name=True)
        else:
            person, fresh = self._linking("phone", name=True)
        yield self._event("lead.captured", {"person": person, "via": "manual", "channel_id": self.channel.channel_id,
                                            "recorded_by": self.owner.staff_id}, fresh)

    def _triage(self) -> Iterator[Draft]:
        """Intake and routing (SPEC §2, tags from the closed vocabulary of §2.1); the agent asks for a
        phone when the lead had none, which links the keys."""
        assert self.owner is not None
        b, rng, complaint = self.behaviour, self.rng, self.complaint
        self._hours(*TRIAGE_DELAY_HOURS[b.kind])
        person, fresh = self._linking("phone") if "phone" not in self.announced else (self._known(), False)
        sport = _one_of(rng, SPORTS_ACTIVE if b.kind == "sports_scene" or rng.random() < 0.4 else SPORTS_CASUAL)
        trauma = rng.random() < (0.5 if b.kind == "sports_scene" else 0.25)
        imaging = rng.random() < (0.75 if b.kind == "medical_trust" else 0.3)
        routed_offline = rng.random() < b.offline_route_rate
        tags: dict[str, Any] = {"injury_type": _one_of(rng, complaint.injuries),
                                "urgency": URGENCY_AFTER_TRAUMA.pick(rng) if trauma else URGENCY.pick(rng)}
        if rng.random() < 0.8:
            tags["imaging_done"] = imaging
        if rng.random() < 0.6:
            tags["payment_band"] = PAYMENT_BANDS[b.kind].pick(rng)
        if sport not in ("无", "散步"):
            tags["target_sport"] = sport
        if rng.random() < 0.1:
            tags["assessed"] = False
        yield self._event("lead.triaged", {
            "person": person,
            "by": self.owner.staff_id,
            "intake": {"pain_site": complaint.pain_site, "duration_days": _one_of(rng, DURATION_DAYS),
                       "trauma": trauma, "prior_imaging": imaging, "sport": sport},
            "route": "offline_assessment" if routed_offline else "online_screening",
            "tags": tags,
        }, fresh)
        return routed_offline

    def _scan(self, ep: EntryPoint, person: dict[str, Any] | None = None, fresh: bool = False) -> Draft:
        """`lead.captured` by scanning a live code (the code's owner gets the lead)."""
        body = {"person": person or self._known(), "via": "scan", "entry_point_id": ep.entry_point_id}
        return self._event("lead.captured", body, fresh)

    def _followup(self, by: StaffMember, medium: str | None = None) -> Draft:
        self.last_followup = self.now
        medium = medium or FOLLOWUP_MEDIUM.pick(self.rng)
        return self._event("followup.logged", {"person": self._known(), "by": by.staff_id, "medium": medium})

    def _nurture(self) -> Iterator[Draft]:
        """Follow-ups until the customer books; sometimes a collision, or the owner goes quiet and
        another agent files a follow-up-timeout ticket."""
        b, rng, coverage = self.behaviour, self.rng, self.w.coverage
        timeout_ticket = rng.random() < 0.015 or coverage.claim("scenario", "followup_timeout", times=2)
        followups = 1 if timeout_ticket else rng.randint(*b.followups_before_booking)
        total_days = rng.uniform(*b.days_to_booking)
        for _ in range(followups):
            self._days(0, total_days / max(1, followups))
            assert self.owner is not None
            yield self._followup(self.owner)
        if rng.random() < b.collision_rate or coverage.claim("scenario", "collision"):
            yield from self._collision()
        if timeout_ticket:
            yield from self._followup_timeout_ticket()

    def _collision(self) -> Iterator[Draft]:
        """Another agent's or channel's code captures the same customer inside protection (撞单)."""
        self._days(0.2, 3)
        options = [ep for codes in self.team.entry_points.values() for ep in codes
                   if ep.owner != self.owner or (self.channel and ep.channel.channel_id != self.channel.channel_id)]
        ep = _one_of(self.rng, options)
        yield self._scan(ep)

    def _lost_lead(self, voucher: _Order | None) -> Iterator[Draft]:
        """No assessment: a last follow-up; an unused platform voucher is often refunded."""
        if self.owner is not None:
            for _ in range(self.rng.randint(0, 3)):
                self._days(1, 5)
                yield self._followup(self.owner)
        if voucher is not None and self.rng.random() < 0.35:
            self._days(3, 14)
            yield from self._refund_whole_order(voucher)

    # -- assessment ----------------------------------------------------------------------------

    def _appointment_slot(self, days_ahead: float) -> int:
        """A half-hour slot in opening hours, at least an hour from now."""
        at = self.now + max(60, int(days_ahead * MINUTES_PER_DAY))
        day, minute = divmod(at, MINUTES_PER_DAY)
        minute = min(max(minute, STORE_OPENS), STORE_CLOSES - 60)
        slot = day * MINUTES_PER_DAY + (minute + 29) // 30 * 30
        if slot < self.now + 60:
            slot = (day + 1) * MINUTES_PER_DAY + 10 * 60
        return slot

    def _assessment(self) -> Iterator[Draft]:
        """Book; attend, no-show or cancel; sometimes rebook. Returns when the visit ends, or None."""
        b, rng = self.behaviour, self.rng
        for attempt in range(3):
            slot = self._appointment_slot(rng.uniform(*b.days_to_slot))
            minutes = _one_of(rng, b.slot_minutes)
            appointment_id = self.w.next_id("ap")
            yield self._event("assessment.booked", {
                "appointment_id": appointment_id, "person": self._known(), "store_id": self.team.store_id,
                "clinician_id": self.clinician.staff_id, "slot_start": self.w.iso(slot), "slot_minutes": minutes})
            outcome = b.outcomes.pick(rng)
            may_retry = attempt < 2
            if rng.random() < 0.5:  # 预约提醒: the front desk confirms the day before
                remind_at = _at_store_hours(max(self.now, slot - MINUTES_PER_DAY - rng.randrange(0, 240)), rng)
                if remind_at < slot - 60:
                    self.now = remind_at
                    yield self._followup(self._front_desk(), "phone")
            if outcome == "cancelled":
                self.now = max(self.now, slot - int(rng.uniform(2, 30) * 60))
                yield self._event("assessment.cancelled", {"appointment_id": appointment_id})
                if may_retry and rng.random() < 0.5:
                    self._days(0.5, 3)
                    continue
                return None
            if outcome == "no_show":
                self.now = slot + 30
                reason = self.w.coverage.pick(rng, "no_show", b.no_show_reasons)
                yield self._event("assessment.no_show", {"appointment_id": appointment_id, "reason": reason})
                if self.owner is not None:  # the agent calls to find out why, and tries to rebook
                    self._hours(2, 30)
                    yield self._followup(self.owner, "phone")
                    if may_retry and rng.random() < 0.3:
                        continue
                return None
            self.now = slot + rng.randrange(0, 6)
            yield self._event("assessment.attended", {"appointment_id": appointment_id})
            return slot + minutes
        return None

    def _visit(self, voucher: _Order | None, visit_end: int) -> Iterator[Draft]:
        """At the assessment: the assessment fee is paid at check-in (or a voucher redeemed), and the
        assessment is delivered as a session. Now and then the visit reveals a split identity."""
        b, rng = self.behaviour, self.rng
        order = voucher
        if order is None and b.assessment_fees and rng.random() < b.assessment_fee_rate:
            self.now += rng.randrange(2, 8)
            fee = _one_of(rng, b.assessment_fees)
            product = Product("assess-full" if fee >= 300 else "assess-sports", "assessment", 1,
                              _one_of(rng, b.slot_minutes), fee, Decimal("120") if rng.random() < 0.8 else None)
            order = yield from self._pay([product], closed_by=self._front_desk(),
                                         paid_via=FEE_PAID_VIA.pick(rng))
        self.now = max(self.now, visit_end)
        if order is not None:
            for item in [i for i in self.items if i.order is order and i.left]:
                yield self._delivered(item)
                self.now += 20
        can_split = self.c.wechat_id is not None and "wechat_id" not in self.announced and "phone" in self.announced
        if can_split and (rng.random() < 0.006 or self.w.coverage.claim("scenario", "merge")):
            yield from self._split_identity_and_merge()

    def _split_identity_and_merge(self) -> Iterator[Draft]:
        """The customer adds the clinic's WeChat with an id the ledger has never seen: that starts a
        second customer. Next day an event names both keys (a merge candidate), and the front desk
        merges them."""
        self._hours(1, 5)
        person, fresh = self._person("wechat_id")
        yield self._event("followup.logged", {"person": person, "by": self._front_desk().staff_id, "medium": "wechat"},
                          fresh)
        self._days(0.5, 2)
        both, _ = self._person("phone", "wechat_id")
        yield self._event("followup.logged", {"person": both, "by": self._consultant().staff_id, "medium": "in_store"})
        self._hours(0.2, 3)
        yield self._event("customers.merged", {
            "survivor": self._person("phone", name=True)[0], "merged": self._person("wechat_id")[0],
            "by": self._front_desk().staff_id, "reason": "同一客户：微信号与手机号属同一人，前台核对后合并"})

    # -- deals -----------------------------------------------------------------------------------

    def _deal(self) -> Iterator[Draft]:
        """After the assessment: a plan bought in the 24 h window, later, or never."""
        b, rng = self.behaviour, self.rng
        if rng.random() < 0.012 or self.w.coverage.claim("scenario", "customer_request"):
            yield from self._customer_request_ticket()
        if rng.random() >= b.conversion_rate:
            self._hours(2, 20)
            yield self._followup(self._consultant())  # the 24 h post-assessment window
            if rng.random() < 0.4:
                self._days(3, 10)
                yield self._followup(self.owner or self._consultant())
            return
        if rng.random() < b.within_24h_share:
            self._advance(rng.uniform(10, 180))
        else:
            self._hours(3, 20)
            yield self._followup(self._consultant())
            self._days(1, 8)
        roll = rng.random()  # mostly a consultant closes; sometimes the agent, sometimes the manager
        if roll < 0.85:
            closed_by = self._consultant()
        else:
            closed_by = self.owner or self.team.manager if roll < 0.95 else self.team.manager
        order = yield from self._pay(self._plan(), closed_by, self._plan_paid_via(), with_validity=True)
        if rng.random() < 0.7:
            self._hours(1, 4, store_hours=False)
            yield self._followup(closed_by, "wechat")  # the plan and the session schedule, sent on WeChat
        if rng.random() < 0.015 or self.w.coverage.claim("scenario", "cooling_off"):
            self._days(1, 6)  # changed their mind within a week, before any session
            yield from self._refund_whole_order(order)

    def _plan(self) -> list[Product]:
        """The treatment plan: a course package (maybe with a fill item), or fill items only."""
        b, rng = self.behaviour, self.rng
        if rng.random() < b.package_rate:
            products = [self._package(b.package_sessions.pick(rng))]
            if rng.random() < 0.3:
                products.append(_fill_item(rng, "shockwave", 30, _one_of(rng, (2, 3)), 330))
            if rng.random() < 0.05:  # a home exercise plan: sold, no sessions
                products.append(Product("home-program", "fill_item", 0, 0, Decimal("199"), Decimal("20")))
            return products
        products = [_fill_item(rng, *_one_of(rng, FILL_ITEMS))]
        if rng.random() < 0.3:
            products.append(_fill_item(rng, "taping", 20, 1, 120))
        return products

    def _package(self, sessions: int) -> Product:
        b, rng = self.behaviour, self.rng
        amount = Decimal(rng.randrange(b.session_price[0], b.session_price[1] + 1, 10) * sessions)
        cost = (amount * Decimal(_one_of(rng, ("0.35", "0.4", "0.45")))).quantize(CENT) if rng.random() < 0.85 else None
        sku = f"{self.complaint.region}-rehab-{sessions}"
        return Product(sku, "course_package", sessions, b.session_minutes, amount, cost)

    def _plan_paid_via(self) -> str:
        if self.platform is not None and self.rng.random() < self.behaviour.platform_payment_rate:
            return PAID_VIA_FOR_PLATFORM[self.platform]
        return PLAN_PAID_VIA.pick(self.rng)

    def _buy_voucher(self) -> Iterator[Draft]:
        """Online: a cheap assessment voucher (团购券) bought on the platform before booking."""
        rng = self.rng
        self._advance(rng.uniform(5, 240), store_hours=False)
        price = _one_of(rng, (Decimal("9.9"), Decimal("49"), Decimal("99")))
        products = [Product(f"assess-trial-{int(price)}", "assessment", 1, _one_of(rng, (30, 45)), price,
                            Decimal("80") if rng.random() < 0.8 else None)]
        if price == Decimal("99") and rng.random() < 0.5:  # combo: assessment + a trial shockwave session
            products = [Product("assess-trial-79", "assessment", 1, 30, Decimal("79"), Decimal("80")),
                        Product("shockwave-trial", "fill_item", 1, 20, Decimal("20"), Decimal("40"))]
        person = self._person("platform_user") if "platform_user" in self.announced else self._linking("platform_user")
        order = yield from self._pay(products, closed_by=self._front_desk(), person=person,
                                     paid_via=PAID_VIA_FOR_PLATFORM[self.platform or "douyin"],
                                     valid_for_days=_one_of(rng, (30, 60)))
        return order

    def _pay(self, products: list[Product], closed_by: StaffMember, paid_via: str,
             person: tuple[dict[str, Any], bool] | None = None, with_validity: bool = False,
             valid_for_days: int | None = None) -> Iterator[Draft]:
        """`order.paid`; the sold sessions join the customer's open items. Returns the order."""
        rng = self.rng
        if person is None:
            if self.c.wechat_id and "wechat_id" not in self.announced and rng.random() < 0.5:
                person = self._linking("wechat_id")  # paid in the mini-program: links WeChat to the customer
            else:
                person = (self._known(), False)
            if rng.random() < 0.3:
                person[0]["name"] = self.c.name
        if with_validity:
            has_package = any(p.product_class == "course_package" for p in products)
            valid_for_days = self.behaviour.package_validity_days if has_package else _one_of(rng, (30, 60))
        order = _Order(self.w.next_id("so"), tuple(products), None)
        body: dict[str, Any] = {"order_id": order.order_id, "person": person[0], "store_id": self.team.store_id,
                                "closed_by": closed_by.staff_id, "paid_via": paid_via,
                                "items": [p.as_item() for p in products]}
        if valid_for_days is not None:
            body["valid_until"] = self.w.day(self.now, valid_for_days)
            order.valid_until = (self.now // MINUTES_PER_DAY + valid_for_days + 1) * MINUTES_PER_DAY - 1
        self.items.extend(_OpenItem(order, p, p.sessions) for p in products if p.sessions)
        yield self._event("order.paid", body, person[1])
        return order

    # -- fulfillment -----------------------------------------------------------------------------

    def _delivered(self, item: _OpenItem) -> Draft:
        """`session.delivered`, naming the sku when the order has more than one item with sessions."""
        if item.left <= 0:
            raise AssertionError("a session beyond what was sold")
        body: dict[str, Any] = {"order_id": item.order.order_id}
        if item.order.items_with_sessions > 1:
            body["sku"] = item.product.sku
        clinician = self.clinician if self.rng.random() < 0.8 else self._any_clinician()
        body.update({"clinician_id": clinician.staff_id, "room_id": _one_of(self.rng, self.team.rooms).room_id,
                     "minutes": item.product.session_minutes})
        item.left -= 1
        return self._event("session.delivered", body)

    def _course(self) -> Iterator[Draft]:
        """Sessions at the customer's cadence until used up, expired (breakage), abandoned or
        refunded; check-ins by a consultant; a repurchase when a package runs out; sometimes a move
        to another store."""
        b, rng = self.behaviour, self.rng
        per_week = rng.uniform(*b.sessions_per_week)
        delivered = 0
        moved = False
        while True:
            open_items = [i for i in self.items if i.left > 0]
            if not open_items:
                bought_package = any(i.product.product_class == "course_package" for i in self.items)
                if bought_package and rng.random() < b.repurchase_rate:
                    self._days(1, 6)
                    yield from self._pay([self._package(b.package_sessions.pick(rng))], closed_by=self._consultant(),
                                         paid_via=self._plan_paid_via(), with_validity=True)
                    continue
                return
            item = open_items[0]
            self._days(7 / per_week * 0.6, 7 / per_week * 1.4)
            if item.order.valid_until is not None and self.now > item.order.valid_until:
                return  # expired with sessions left: breakage
            if rng.random() < b.dropout_per_session:
                yield from self._abandon(item)
                return
            may_move = not moved and delivered >= 2 and self.owner is not None  # a transfer needs an owner
            if may_move and (rng.random() < 0.004 or self.w.coverage.claim("scenario", "cross_store", times=2)):
                moved = True
                yield from self._cross_store_ticket()
                self._days(1, 4)
            yield self._delivered(item)
            delivered += 1
            if rng.random() < 0.6:  # 课后回访: how did the session go, exercises done?
                self._hours(1, 3, store_hours=False)
                yield self._followup(self._consultant(), "wechat")
            if item.order.refunded == 0 and (rng.random() < 0.01 or self.w.coverage.claim("scenario", "goodwill")):
                self._hours(1, 48)  # a price adjustment: money back, no sessions
                yield from self._refund(item.order, min(Decimal(_one_of(rng, (100, 150, 200))), item.order.amount / 4),
                                        sku=item.product.sku)

    def _abandon(self, item: _OpenItem) -> Iterator[Draft]:
        """The customer stops coming; some ask for the unused sessions back (a partial refund)."""
        rng = self.rng
        if rng.random() < 0.5:
            self._days(14, 20)
            yield self._followup(self._consultant(), "phone")  # a stalled course on the due list
        if item.left > 0 and (rng.random() < 0.35 or self.w.coverage.claim("scenario", "partial_refund")):
            self._days(1, 10)
            amount = (item.session_value * item.left).quantize(CENT, rounding=ROUND_HALF_UP)
            sessions, item.left = item.left, 0
            yield from self._refund(item.order, amount, sessions, sku=item.product.sku)

    def _refund_whole_order(self, order: _Order) -> Iterator[Draft]:
        """Everything back: one refund for a single-item order, one per item (naming its sku) otherwise."""
        open_items = {i.product.sku: i for i in self.items if i.order is order}
        if len(order.products) == 1:
            item = open_items.get(order.products[0].sku)
            yield from self._refund(order, order.amount, item.left if item else None)
            if item:
                item.left = 0
            return
        for product in order.products:
            item = open_items.get(product.sku)
            yield from self._refund(order, product.amount, item.left if item else None, sku=product.sku)
            if item:
                item.left = 0

    def _refund(self, order: _Order, amount: Decimal, sessions: int | None = None,
                sku: str | None = None) -> Iterator[Draft]:
        """`order.refunded`, never above what is left of the payment; names the sku on multi-item orders."""
        amount = min(amount.quantize(CENT, rounding=ROUND_HALF_UP), order.amount - order.refunded)
        names_sku = sku is not None and len(order.products) > 1
        if names_sku:  # a refund naming an item never exceeds what is left of that item (§2.2)
            item_amount = next(p.amount for p in order.products if p.sku == sku)
            amount = min(amount, item_amount - order.refunded_by_sku.get(sku, Decimal("0")))
        if amount <= 0 and not sessions:
            return
        order.refunded += amount
        if names_sku:
            order.refunded_by_sku[sku] = order.refunded_by_sku.get(sku, Decimal("0")) + amount
        body: dict[str, Any] = {"refund_id": self.w.next_id("rf"), "order_id": order.order_id, "amount": money(amount)}
        if sessions is not None:
            body["sessions"] = sessions
        if sku is not None and len(order.products) > 1:
            body["sku"] = sku
        yield self._event("order.refunded", body)

    # -- ownership tickets -----------------------------------------------------------------------

    def _ticket(self, trigger: str, to_staff: StaffMember, requested_by: StaffMember, note: str,
                decider: StaffMember, eligible: bool, to_channel: Channel | None = None) -> Iterator[Draft]:
        """A transfer request and its decision: approved, rejected, or approved by the requester
        himself (which the rules refuse). `eligible` is what the journey intends; the ledger decides."""
        rng = self.rng
        ticket_id = self.w.next_id("tk")
        body: dict[str, Any] = {"ticket_id": ticket_id, "person": self._known(), "to_staff_id": to_staff.staff_id}
        if to_channel is not None:
            body["to_channel_id"] = to_channel.channel_id
        body.update({"trigger": trigger, "requested_by": requested_by.staff_id, "note": note})
        yield self._event("ownership.transfer_requested", body)
        self._hours(1, 24)
        decision = self.w.coverage.pick(rng, "decision", DECISIONS)
        if decision == "self_approved" or (decision == "approved" and decider == requested_by):
            decided_by, decision, note = requested_by, "approved", "已处理"
        elif decision == "approved":
            decided_by, note = decider, "同意转移"
        else:
            decided_by, note = decider, "证据不足，维持原归属"
        yield self._event("ownership.transfer_decided", {"ticket_id": ticket_id, "decision": decision,
                                                         "decided_by": decided_by.staff_id, "note": note})
        if eligible and decision == "approved" and decided_by != requested_by:
            self.owner = to_staff

    def _followup_timeout_ticket(self) -> Iterator[Draft]:
        """The owner went quiet; another agent asks for the lead (eligible after 7 silent days).
        Sometimes the request comes too early: the owner did follow up (ineligible)."""
        eligible = self.w.coverage.pick(self.rng, "timeout_eligible", MOSTLY_ELIGIBLE)
        if eligible:
            quiet_until = self.last_followup + int(self.rng.uniform(8, 12) * MINUTES_PER_DAY)
            self.now = _at_store_hours(max(self.now, quiet_until), self.rng)
        else:
            self._days(2, 4)
        other = _one_of(self.rng, [a for a in self.team.agents if a != self.owner] or self.team.consultants)
        yield from self._ticket("followup_timeout", other, other, "原负责人超过7天未跟进，申请接手",
                                self.team.manager, eligible)
        self._hours(2, 24)
        yield self._followup(self.owner or other)

    def _customer_request_ticket(self) -> Iterator[Draft]:
        """After the assessment the customer asks to be looked after by a particular consultant;
        sometimes the store manager files and approves it himself (self-approval)."""
        self._hours(0.5, 3)
        consultant = self._consultant()
        requested_by = self.team.manager if self.rng.random() < 0.3 else consultant
        yield from self._ticket("customer_request", consultant, requested_by, "客户要求由该顾问跟进后续方案",
                                self.team.manager, eligible=True)

    def _cross_store_ticket(self) -> Iterator[Draft]:
        """The customer moves house; the course continues at another store (eligible), or the request
        names a colleague in the same store (ineligible)."""
        others = [t for t in self.w.group.teams if t.index != self.team.index]
        nearby = [t for t in others if t.store.city_code == self.team.store.city_code] or others
        eligible = bool(nearby) and self.w.coverage.pick(self.rng, "cross_store_eligible", MOSTLY_ELIGIBLE)
        origin = self.team
        target = _one_of(self.rng, nearby) if eligible else origin
        to_staff = _one_of(self.rng, target.agents)
        to_channel = self.channel if self.rng.random() < 0.4 else None
        note = f"客户搬家，转至{target.store.name}继续疗程" if eligible else "客户希望换一位渠道同事对接"
        yield from self._ticket("cross_store", to_staff, target.manager, note, origin.manager, eligible, to_channel)
        if eligible:
            self.team = target
            self.clinician = self._any_clinician()

    # -- walk-ins ----------------------------------------------------------------------------------

    def _walk_in(self) -> Iterator[Draft]:
        """自然到店: pays at the desk with no lead, so no source reward. Some come back for a
        package (a repeat order); a few later scan a partner's code (a lead after the first order)."""
        rng = self.rng
        product = _one_of(rng, (_fill_item(rng, "manual-therapy", 50, 1, 450),
                                _fill_item(rng, "dry-needling", 40, 1, 320),
                                Product("assess-full", "assessment", 1, 60, Decimal("398"), Decimal("120"))))
        desk = self._consultant() if rng.random() < 0.6 else self._front_desk()
        order = yield from self._pay([product], closed_by=desk,
                                     paid_via="store", person=self._person("phone", name=True))
        self.now += product.session_minutes
        yield self._delivered(self.items[-1])
        assert self.items[-1].order is order
        if rng.random() < 0.1:
            self._days(2, 20)
            channel = _one_of(rng, self.team.channels["sports_scene"])
            ep = _one_of(rng, self.team.entry_points[channel.channel_id])
            self.owner = ep.owner
            yield self._scan(ep)
        if rng.random() < 0.35:
            self._days(0, 4)
            yield from self._pay([self._package(self.behaviour.package_sessions.pick(rng))],
                                 closed_by=self._consultant(), paid_via="store", with_validity=True)
            yield from self._course()


PHONE_STYLES = Weighted((0, 5), (1, 2), (2, 1), (3, 1), (4, 1), (5, 1))  # see format_phone
URGENCY = Weighted(("low", 3), ("medium", 5), ("high", 2))
URGENCY_AFTER_TRAUMA = Weighted(("low", 2), ("medium", 5), ("high", 4))
FOLLOWUP_MEDIUM = Weighted(("wechat", 6), ("phone", 3), ("in_store", 1))
MOSTLY_ELIGIBLE = Weighted((True, 3), (False, 1))
DECISIONS = Weighted(("approved", 8), ("rejected", 2), ("self_approved", 0.7))
FEE_PAID_VIA = Weighted(("store", 3), ("mini_program", 2))
PLAN_PAID_VIA = Weighted(("store", 5), ("mini_program", 3))
DURATION_DAYS = (3, 7, 14, 30, 45, 60, 90, 180, 365)  # how long it has hurt
TRIAGE_DELAY_HOURS = {"medical_trust": (1, 24), "sports_scene": (0.2, 4), "online_platform": (0.1, 6)}
PAYMENT_BANDS = {
    "medical_trust": Weighted(("mid", 2), ("high", 3)),
    "sports_scene": Weighted(("low", 1), ("mid", 3), ("high", 1)),
    "online_platform": Weighted(("low", 3), ("mid", 2)),
}
FILL_ITEMS = (  # name, minutes, sessions, price per session
    ("shockwave", 30, 1, 380), ("manual-therapy", 50, 1, 450),
    ("manual-therapy", 50, 3, 420), ("dry-needling", 40, 1, 320),
)


def _fill_item(rng: random.Random, name: str, minutes: int, sessions: int, price: int) -> Product:
    amount = Decimal(price * sessions)
    cost = (amount * Decimal("0.3")).quantize(CENT) if rng.random() < 0.8 else None
    return Product(f"{name}-{sessions}", "fill_item", sessions, minutes, amount, cost)


# ---------------------------------------------------------------------------------------------
# The stream: merge journeys in time order, let a few arrive late, number them
# ---------------------------------------------------------------------------------------------


def _merge_journeys(world: World, customers: Iterator[Customer], window_end: int) -> Iterator[Draft]:
    """All journeys' drafts in `occurred_at` order. A journey is admitted when the clock reaches its
    customer's arrival, so only customers in flight are held; a journey is closed at its first event
    at or after the window end (what would happen later is not part of the data)."""
    heap: list[tuple[int, int, Draft, Iterator[Draft]]] = []
    tie = count()

    def advance(journey: Iterator[Draft]) -> None:
        draft = next(journey, None)
        if draft is None:
            return
        if draft.at >= window_end:
            journey.close()  # type: ignore[attr-defined]
            return
        heapq.heappush(heap, (draft.at, next(tie), draft, journey))

    advance(_housekeeping(world.group))
    waiting = next(customers, None)
    while heap or waiting is not None:
        while waiting is not None and (not heap or waiting.arrival <= heap[0][0]):
            advance(Journey(world, waiting).events())
            waiting = next(customers, None)
        if heap:
            _, _, draft, journey = heapq.heappop(heap)
            yield draft
            advance(journey)


REFERENCE_FIELDS = {  # type -> the id field it refers to (must already be written)
    "session.delivered": "order_id", "order.refunded": "order_id",
    "assessment.attended": "appointment_id", "assessment.no_show": "appointment_id",
    "assessment.cancelled": "appointment_id", "ownership.transfer_decided": "ticket_id",
}
DEFINITION_FIELDS = {  # type -> the id field it defines
    "order.paid": "order_id", "assessment.booked": "appointment_id", "ownership.transfer_requested": "ticket_id",
}


@dataclass(order=True)
class _Held:
    """An event held back to arrive late."""

    release_at: int
    tie: int
    draft: Draft = field(compare=False)
    done: bool = field(default=False, compare=False)


def _with_late_arrivals(rng: random.Random, drafts: Iterator[Draft]) -> Iterator[Draft]:
    """Hold back ~1 % of events for 1–36 h of stream time (SPEC §2.2: events arrive late and out of
    order). A held event is released at once, ahead of anything that refers to it."""
    held: list[_Held] = []
    held_by_id: dict[str, _Held] = {}
    tie = count()

    def release(entry: _Held) -> Iterator[Draft]:
        entry.done = True
        defined = DEFINITION_FIELDS.get(entry.draft.type)
        if defined is not None:
            held_by_id.pop(entry.draft.body[defined], None)
        yield from definition_of(entry.draft)
        yield entry.draft

    def definition_of(draft: Draft) -> Iterator[Draft]:
        ref_field = REFERENCE_FIELDS.get(draft.type)
        if ref_field is not None and draft.body[ref_field] in held_by_id:
            yield from release(held_by_id[draft.body[ref_field]])

    for draft in drafts:
        while held and held[0].release_at <= draft.at:
            entry = heapq.heappop(held)
            if not entry.done:
                yield from release(entry)
        if draft.may_be_late and rng.random() < LATE_SHARE:
            entry = _Held(draft.at + rng.randrange(60, 36 * 60), next(tie), draft)
            heapq.heappush(held, entry)
            defined = DEFINITION_FIELDS.get(draft.type)
            if defined is not None:
                held_by_id[draft.body[defined]] = entry
            continue
        if held_by_id:
            yield from definition_of(draft)
        yield draft
    while held:
        entry = heapq.heappop(held)
        if not entry.done:
            yield from release(entry)


def _window_end(start: date, months: int) -> date:
    """The same day `months` later (the month's last day when it has no such day); exclusive."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def generate(seed: int = 7, customers: int = 600, start: date = date(2026, 9, 1), months: int = 3,
             stores: int | None = None) -> Iterator[dict]:
    """Yield SPEC §2 event dicts (JSON-ready: money as strings with 2 decimals, datetimes as ISO-8601
    strings with +08:00 offset, dates as YYYY-MM-DD) in arrival order.

    Reference events come first (dated before `start`); then about ``EVENTS_PER_CUSTOMER`` (12)
    events per customer over ``months`` months from `start`, mostly in `occurred_at` order with
    ≈1 % arriving late. ``stores`` defaults to :func:`stores_for` (``customers``). Same arguments,
    same output; memory stays bounded by the customers in flight (see the module docstring).
    """
    if customers < 0 or months < 1 or (stores is not None and stores < 1):
        raise ValueError("customers must be >= 0, months >= 1 and stores >= 1")
    rng = random.Random(seed)
    n_stores = stores or stores_for(customers)
    window_days = (_window_end(start, months) - start).days
    window_minutes = window_days * MINUTES_PER_DAY
    group = _build_group(rng, n_stores, max(customers, 1), months, window_minutes)
    world = World(rng=rng, group=group, window_days=window_days, start=start)
    late_rng = random.Random(f"{seed}:late")
    numbers = count(1)
    journeys = _merge_journeys(world, iter(_CustomerSource(world, customers)), window_minutes)
    for draft in chain(_reference_drafts(group), _with_late_arrivals(late_rng, journeys)):
        event_id = f"demo-{next(numbers):06d}"
        yield {"event_id": event_id, "type": draft.type, "occurred_at": world.iso(draft.at), **draft.body}


def write_jsonl(path_or_file: str | os.PathLike[str] | io.IOBase | Any, **kwargs: Any) -> int:
    """Write :func:`generate` (``**kwargs``) as JSON Lines (UTF-8, one object a line); return the count.

    Accepts a path, or an open text or binary file."""
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "w", encoding="utf-8", newline="\n") as handle:
            return _write(handle, text=True, **kwargs)
    return _write(path_or_file, text=isinstance(path_or_file, io.TextIOBase), **kwargs)


def _write(handle: Any, text: bool, **kwargs: Any) -> int:
    written = 0
    for event in generate(**kwargs):
        line = json.dumps(event, ensure_ascii=False) + "\n"
        handle.write(line if text else line.encode("utf-8"))
        written += 1
    return written
