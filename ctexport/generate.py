"""Sample input for ctexport: CleverTap-like events and user profiles, good and bad, as files.

The records follow SPEC section 1. Events carry system events (App Launched, Notification Clicked, ...)
and custom ones (Charged with its `Items`, names with `%`, `-`, `/`, `,`, `#`, `&` and non-ASCII letters),
from Android, iOS and Web users, with `deviceInfo`, CleverTap's `ct_*` event properties and unicode values.
Profiles come in several versions per `objectId`. On request the output holds bad records of every kind
SPEC section 1 names, spread through the good ones, so the dead-letter path sees real work.

Everything is a pure function of the seed (and the window): same arguments, same bytes. The good records do
not depend on `bad`: asking for bad records only inserts lines.

    python -m ctexport.generate --out demo-in --events 20000 --profiles 2000 --days 3 --format jsonl.gz
"""

from __future__ import annotations

import argparse
import bisect
import gzip as gziplib
import importlib.resources
import itertools
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from random import Random
from typing import Any

import fastavro
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

EVENTS = "events"
PROFILES = "profiles"
FORMATS = ("jsonl", "jsonl.gz", "avro", "parquet")

TS_LIMIT = 253402300800  # 10000-01-01T00:00:00Z: SPEC's upper bound for epoch seconds
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ZIPF_A = 1.2
MAX_EVENT_NAME = 512

# What `bad` cycles over, in this order (SPEC section 1, "bad record").
EVENT_BAD_KINDS = (
    "truncated JSON",
    "invalid UTF-8",
    "eventName missing",
    "eventName not a string",
    "ts in milliseconds",
    "ts a string",
    "ts missing",
    "NaN or Infinity literal",
    "integer beyond 64 bits",
    "eventProps not an object",
    "eventName empty",
    "eventName with a control character",
    "eventName longer than 512 characters",
)
PROFILE_BAD_KINDS = (
    "objectId missing",
    "updatedAt missing",
    "updatedAt in milliseconds",
    "truncated JSON",
)

# ---------------------------------------------------------------------------------------------------------
# Value pools. Everything per record is a pick from these, so generation stays cheap.

# (name, ascii handle for the e-mail address)
_PEOPLE = (
    ("Aarav Sharma", "aarav.sharma"),
    ("Priya Iyer", "priya.iyer"),
    ("José Álvarez", "jose.alvarez"),
    ("Zoë O'Brien", "zoe.obrien"),
    ("Søren Madsen", "soren.madsen"),
    ("王芳", "wang.fang"),
    ("佐藤 優希", "yuki.sato"),
    ("Ольга Смирнова", "olga.smirnova"),
    ("محمد العلي", "m.alali"),
    ("Ayşe Yılmaz", "ayse.yilmaz"),
    ("Łukasz Nowak", "lukasz.nowak"),
    ("Nguyễn Thị Hoa", "hoa.nguyen"),
    ("Chloé Dubois", "chloe.dubois"),
    ("Björn Öberg", "bjorn.oberg"),
    ("Amara Okafor", "amara.okafor"),
    ("김민준", "minjun.kim"),
    ("Liam Murphy", "liam.murphy"),
    ("Emma Schmidt", "emma.schmidt"),
    ("Raj Patel", "raj.patel"),
    ("Sofía García", "sofia.garcia"),
    ("Lucas Silva", "lucas.silva"),
    ("Dewi Lestari", "dewi.lestari"),
    ("Noah Williams", "noah.w"),
    ("Ananya Reddy, MBA", "ananya.reddy"),
)
_MAIL_DOMAINS = ("gmail.com", "yahoo.co.in", "outlook.com", "icloud.com", "example.de", "mail.ru", "qq.com")

# (city, lat, lon, currency, phone prefix, language, time zone)
_PLACES = (
    ("Mumbai", 19.0760, 72.8777, "INR", "+91", "hi", "Asia/Kolkata"),
    ("Bengaluru", 12.9716, 77.5946, "INR", "+91", "kn", "Asia/Kolkata"),
    ("Jakarta", -6.2088, 106.8456, "IDR", "+62", "id", "Asia/Jakarta"),
    ("São Paulo", -23.5505, -46.6333, "BRL", "+55", "pt", "America/Sao_Paulo"),
    ("Berlin", 52.5200, 13.4050, "EUR", "+49", "de", "Europe/Berlin"),
    ("Tokyo", 35.6762, 139.6503, "JPY", "+81", "ja", "Asia/Tokyo"),
    ("New York", 40.7128, -74.0060, "USD", "+1", "en", "America/New_York"),
    ("Dubai", 25.2048, 55.2708, "AED", "+971", "ar", "Asia/Dubai"),
    ("Lagos", 6.5244, 3.3792, "NGN", "+234", "en", "Africa/Lagos"),
    ("London", 51.5074, -0.1278, "GBP", "+44", "en", "Europe/London"),
    ("Singapore", 1.3521, 103.8198, "SGD", "+65", "en", "Asia/Singapore"),
    ("Ciudad de México", 19.4326, -99.1332, "MXN", "+52", "es", "America/Mexico_City"),
)
_CARRIERS = (
    "Jio",
    "Airtel",
    "Vi",
    "Telkomsel",
    "Vivo",
    "Telekom.de",
    "docomo",
    "Verizon",
    "T-Mobile",
    "3",
    "MTN",
)
_NETWORK_TYPES = ("4G", "4G", "5G", "3G", "2G")
_ANDROID = (
    ("Samsung", "SM-S918B"),
    ("Samsung", "SM-A546E"),
    ("Xiaomi", "Redmi Note 12"),
    ("OnePlus", "CPH2449"),
    ("Google", "Pixel 8"),
    ("motorola", "moto g84 5G"),
    ("OPPO", "CPH2527"),
    ("vivo", "V2250"),
)
_ANDROID_OS = ("11", "12", "13", "14")
_IOS = (("Apple", "iPhone14,5"), ("Apple", "iPhone15,2"), ("Apple", "iPhone16,1"), ("Apple", "iPad13,18"))
_IOS_OS = ("16.7.5", "17.4.1", "17.5", "18.0.1")
_BROWSERS = ("Chrome", "Chrome", "Safari", "Firefox", "Edge", "Samsung Internet", "Others")
_WEB_OS = ("Windows", "Mac OS", "Android", "iOS", "Linux")
_APP_VERSIONS = ("5.9.2", "5.10.0", "5.11.1", "6.0.0")
_SDK = {"Android": (40602, 60201, 70000), "iOS": (40101, 60100, 70001), "Web": (10609, 10802)}
_BT_VERSIONS = ("ble", "ble", "classic", "none")

# (category, product name, price): prices mix integers and floats on purpose (schema widening)
_PRODUCTS = (
    ("Mens Watch", "Casio Chronograph Watch", 59.99),
    ("Shoes", "Zoë Runner 2 — Blue", 84.5),
    ("Beverages", "抹茶ラテ 250ml", 3.2),
    ("Coffee", "Café Crème Capsules ×10", 4.99),
    ("Wearables", "Смарт-часы Amazfit", 129),
    ("Jeans", 'Levi\'s 501 "Original" Jeans', 69.95),
    ("Ethnic Wear", "Kurta, Cotton (Blue)", 24),
    ("Membership", "+Plus Membership (1 yr)", 49),
    ("Vouchers", "-20% Voucher", 10),
    ("Audio", "🎧 Wireless Earbuds", 39.99),
    ("Books", "Der Zauberberg / Thomas Mann", 14.9),
    ("Grocery", "Atta 5 kg", 6.75),
    ("Home", "@Home Starter Bundle", 99),
    ("Beauty", "Crème de la Mer 30 ml", 185.0),
)
_QUERIES = (
    "running shoes",
    "red 'running' shoes, size 42",
    'iphone 15 "pro max"',
    "kurta for men",
    "抹茶",
    "café près de moi",
    "смартфон",
    "=cheap deals",
    "line one\nline two",
    "tab\there",
    "vertical\x0btab pasted",
    "",
    "😀 gifts",
    "a & b <c>",
)
_FILTERS = ("Brand: Nike", "Price < 50", "Size: M", "Colour: Grün", "In stock", "4★ & up")
_SCREENS = ("Home", "Product", "Cart", "Checkout", "Search", "Profile", "Settings", "Offers")
_PAYMENT_MODES = ("Credit Card", "UPI", "Net Banking", "COD", "PayPal", "Apple Pay", "Wallet")
_CAMPAIGN_TYPES = ("Push", "Email", "SMS", "WhatsApp", "InApp", "WebPush")
_CAMPAIGNS = ("Diwali Sale 🎉", "Cart reminder", "Winback – 30 days", "Flash sale, 2 hrs only", "新年セール")
_UTM_SOURCES = ("google", "facebook", "instagram", "newsletter", "tiktok", "(direct)")
_UTM_MEDIUMS = ("cpc", "social", "email", "organic", "referral")
_VIDEOS = ("Intro to Yoga", "Unboxing: Pixel 8", "Cooking 🍛 at home", "Top 10 goals", "Как выбрать ноутбук")
_QUALITIES = ("360p", "480p", "720p", "1080p", "4K")
_COMMENTS = ("Great app!", "Très bien 👍", "Super, gerne wieder", "最高です", "ok", "Love it <3", None)
_CHARACTERS = ("Knight", "Mage", "Archer", "忍者", "Élf")
_ZAHLUNGSARTEN = ("Kreditkarte", "PayPal", "Rechnung", "Sofortüberweisung", "Lastschrift")
_SHIHARAI = ("クレジットカード", "コンビニ払い", "PayPay", "代金引換")
_SHOHIN = ("抹茶ラテ 250ml", "ワイヤレスイヤホン", "文庫本セット", "ランニングシューズ")
_BANNERS = ("hero-top", "carousel-2", "popup", "footer")
_GENDERS = ("M", "F", "M", "F", "O", None)
_TIERS = ("Bronze", "Silver", "Gold", "Platinum")
_INTERESTS = ("Fashion", "Cricket", "Anime", "Cooking", "Fußball", "Gaming", "Travel", "Music")
_URLS = (
    "https://shop.example.com/",
    "https://shop.example.com/p/casio-chronograph?ref=home",
    "https://shop.example.com/search?q=kurta%2C+cotton",
    "https://shop.example.com/offers/50%25-off",
    "https://shop.example.com/ja/購入",
)
_REFERRERS = ("https://www.google.com/", "https://www.facebook.com/", "", None)

# ---------------------------------------------------------------------------------------------------------
# Users: one pool per seed, shared by events and profiles, so events point at profiles that exist.


class _User:
    __slots__ = (
        "idx",
        "object_id",
        "platform",
        "profile",
        "device",
        "ct",
        "place",
        "lat",
        "lon",
        "legacy",
        "created",
        "gender",
        "dob",
    )

    def __init__(self, idx: int, rng: Random) -> None:
        rnd = rng.random
        self.idx = idx
        self.object_id = "__" + format(rng.getrandbits(128), "032x")
        r = rnd()
        self.platform = "Android" if r < 0.55 else "iOS" if r < 0.85 else "Web"
        place = self.place = _PLACES[int(rnd() * len(_PLACES))]
        name, handle = _PEOPLE[int(rnd() * len(_PEOPLE))]
        anonymous = rnd() < 0.25
        email = None if anonymous or rnd() < 0.1 else f"{handle}{idx}@{_MAIL_DOMAINS[int(rnd() * 7)]}"
        phone = None if anonymous or rnd() < 0.3 else place[4] + str(7000000000 + int(rnd() * 2999999999))
        r = rnd()
        if anonymous:
            identity: str | int | None = None
        elif r < 0.4 and email:
            identity = email
        elif r < 0.85:
            identity = f"CUST-{100000 + idx}"
        else:
            identity = 910000000000 + idx * 7919  # numeric identities exist (phone numbers as ids)
        self.profile: dict[str, Any] = {
            "objectId": self.object_id,
            "identity": identity,
            "all_identities": [],
            "platform": self.platform,
        }
        if identity is not None:
            self.profile["all_identities"].append(str(identity))
        if email is not None and email != identity:
            self.profile["all_identities"].append(email)
        if not anonymous:
            self.profile["email"] = email
            self.profile["phone"] = phone
            self.profile["name"] = name
        self.lat = None if rnd() < 0.15 else place[1] + (rnd() - 0.5) * 0.3
        self.lon = None if self.lat is None else place[2] + (rnd() - 0.5) * 0.3
        self.legacy = rnd() < 0.2  # older SDKs send booleans as "true"/"false" strings
        sdks = _SDK[self.platform]
        sdk = sdks[int(rnd() * len(sdks))]
        app = _APP_VERSIONS[int(rnd() * len(_APP_VERSIONS))]
        if self.platform == "Web":
            os_version = _WEB_OS[int(rnd() * len(_WEB_OS))]
            self.device = {
                "browser": _BROWSERS[int(rnd() * len(_BROWSERS))],
                "os_version": os_version,
                "sdk_version": sdk,
            }
            self.ct = {"ct_sdk_version": sdk, "ct_os_version": os_version}
        else:
            make, model = (_ANDROID if self.platform == "Android" else _IOS)[int(rnd() * 4)]
            oss = _ANDROID_OS if self.platform == "Android" else _IOS_OS
            os_version = oss[int(rnd() * 4)]
            self.device = {
                "make": make,
                "model": model,
                "os_version": os_version,
                "app_version": app,
                "sdk_version": sdk,
                "dpi": (320, 420, 440, 480, 560)[int(rnd() * 5)] if self.platform == "Android" else 460,
            }
            self.ct = {
                "ct_sdk_version": sdk,
                "ct_os_version": os_version,
                "ct_app_version": app,
                "ct_network_carrier": _CARRIERS[int(rnd() * len(_CARRIERS))],
                "ct_bluetooth_version": _BT_VERSIONS[int(rnd() * 4)],
            }
        self.created = None if rnd() < 0.03 else int(rnd() * 2 * 365 * 86400)  # seconds before the window
        self.gender = _GENDERS[int(rnd() * len(_GENDERS))]
        year, month, day = 1960 + int(rnd() * 45), 1 + int(rnd() * 12), 1 + int(rnd() * 28)
        self.dob = None if rnd() < 0.4 else f"{year}-{month:02d}-{day:02d}"


def _users(seed: int, count: int) -> list[_User]:
    rng = Random(f"ctexport-users-{seed}")
    return [_User(i, rng) for i in range(count)]


# ---------------------------------------------------------------------------------------------------------
# Event names and their properties. Each builder returns the event-specific properties.

_Rnd = Callable[[], float]


def _pick(rnd: _Rnd, seq: tuple) -> Any:
    return seq[int(rnd() * len(seq))]


def _notification(rnd: _Rnd, u: _User) -> dict:
    cid = 1700000000 + int(rnd() * 5000) * 17
    return {
        "Campaign id": cid,
        "Campaign type": _pick(rnd, _CAMPAIGN_TYPES),
        "Campaign name": _pick(rnd, _CAMPAIGNS),
        "wzrk_id": f"{cid}_20240{1 + int(rnd() * 9)}1{int(rnd() * 10)}",
        "wzrk_pivot": "wzrk_default" if rnd() < 0.8 else "variant-b",
        "Variant": None if rnd() < 0.7 else "B",
    }


def _product(rnd: _Rnd, u: _User) -> dict:
    cat, name, price = _pick(rnd, _PRODUCTS)
    return {
        "Product ID": 10000 + int(rnd() * 90000),
        "Product name": name,
        "Category": cat,
        "Price": price,
        "Currency": u.place[3],
        "In Stock": rnd() < 0.9,
        "Rating": None if rnd() < 0.3 else round(1 + rnd() * 4, 1),
        "Screen": _pick(rnd, _SCREENS),
    }


def _added_to_cart(rnd: _Rnd, u: _User) -> dict:
    props = _product(rnd, u)
    props["Quantity"] = 1 + int(rnd() * rnd() * 4)
    return props


def _charged(rnd: _Rnd, u: _User) -> dict:
    items = []
    amount = 0.0
    for _ in range(1 + int(rnd() * rnd() * 5)):
        cat, name, price = _pick(rnd, _PRODUCTS)
        q = 1 + int(rnd() * rnd() * 3)
        items.append({"Category": cat, "Product name": name, "Quantity": q, "Price": price})
        amount += q * price
    return {
        "Amount": round(amount, 2),
        "Currency": u.place[3],
        "Payment mode": _pick(rnd, _PAYMENT_MODES),
        "Charged ID": 4000000000 + int(rnd() * 999999999),
        "Items": items,
        "Coupon code": None if rnd() < 0.7 else _pick(rnd, ("WELCOME10", "DIWALI50", "FREESHIP")),
        "Delivery": {"city": u.place[0], "express": rnd() < 0.2},
    }


def _search(rnd: _Rnd, u: _User) -> dict:
    return {
        "Query": _pick(rnd, _QUERIES),
        "Results": int(rnd() * rnd() * 500),
        "Filters": [_pick(rnd, _FILTERS) for _ in range(int(rnd() * 3))],
        "Voice Search": rnd() < 0.05,
        "Screen": "Search",
    }


def _video(rnd: _Rnd, u: _User) -> dict:
    duration = 30 + int(rnd() * 3600)
    return {
        "Video ID": f"v{int(rnd() * 1e6):06d}",
        "Title": _pick(rnd, _VIDEOS),
        "Duration": duration,
        "Position": round(rnd() * duration, 3),
        "Autoplay": rnd() < 0.4,
        "Quality": _pick(rnd, _QUALITIES),
        "Stream": {
            "cdn": _pick(rnd, ("akamai", "fastly", "cloudfront")),
            "bitrate_kbps": 400 + int(rnd() * 8000),
        },
    }


def _rated(rnd: _Rnd, u: _User) -> dict:
    return {"Stars": 5, "Comment": _pick(rnd, _COMMENTS), "Screen": "Settings", "Prompted": rnd() < 0.5}


def _level_up(rnd: _Rnd, u: _User) -> dict:
    level = 1 + int(rnd() * 80)
    # XP sometimes needs more than 53 bits: a Parquet writer must widen such a column to string
    xp = level * 1250 if rnd() < 0.98 else 9007199254740993 + int(rnd() * 1000)
    return {
        "Level": level,
        "Bonus Coins": 50 * int(1 + rnd() * 20),
        "Character": _pick(rnd, _CHARACTERS),
        "XP": xp,
    }


def _kauf(rnd: _Rnd, u: _User) -> dict:
    return {
        "Betrag": round(5 + rnd() * 300, 2),
        "Währung": "EUR",
        "Zahlungsart": _pick(rnd, _ZAHLUNGSARTEN),
        "Artikelanzahl": 1 + int(rnd() * 6),
        "Gutschein verwendet": rnd() < 0.25,
    }


def _kounyuu(rnd: _Rnd, u: _User) -> dict:
    return {
        "金額": 300 + int(rnd() * 30000),
        "通貨": "JPY",
        "支払方法": _pick(rnd, _SHIHARAI),
        "商品名": _pick(rnd, _SHOHIN),
        "ポイント利用": rnd() < 0.3,
    }


def _offer(rnd: _Rnd, u: _User) -> dict:
    return {
        "Offer ID": f"OFF-{int(rnd() * 9999):04d}",
        "Discount %": 50,
        "Valid Until": f"2024-12-{1 + int(rnd() * 28):02d}",
        "Banner": _pick(rnd, _BANNERS),
    }


def _utm(rnd: _Rnd, u: _User) -> dict:
    return {
        "utm_source": _pick(rnd, _UTM_SOURCES),
        "utm_medium": _pick(rnd, _UTM_MEDIUMS),
        "utm_campaign": _pick(rnd, ("summer_sale", "brand", "retarget-7d", "référence")),
        "Install": rnd() < 0.3,
    }


def _session(rnd: _Rnd, u: _User) -> dict:
    return {
        "Session Length": int(rnd() * rnd() * 3600),
        "Events": 1 + int(rnd() * 40),
        "First Session": rnd() < 0.05,
    }


def _installed(rnd: _Rnd, u: _User) -> dict:
    return {
        "Install Source": _pick(rnd, ("Play Store", "App Store", "Referral", "Preload")),
        "Reinstall": rnd() < 0.1,
    }


def _generic(rnd: _Rnd, u: _User) -> dict:
    r = rnd()
    props: dict[str, Any] = {"Screen": _pick(rnd, _SCREENS)}
    if r < 0.5:
        props["Source"] = _pick(rnd, ("organic", "push", "deeplink", "search"))
    if r < 0.7:
        props["Value"] = round(rnd() * 100, 2) if r < 0.35 else int(rnd() * 100)
    if r > 0.6:
        props["Tags"] = [_pick(rnd, _INTERESTS) for _ in range(1 + int(rnd() * 3))]
    props["Logged In"] = rnd() < 0.7
    return props


def _empty(rnd: _Rnd, u: _User) -> dict:
    return {}


# (name, builder, kind): kind "client" (device, ct_* props), "server" (no deviceInfo), "mobile" (client, not Web)
# The order is the Zipf rank: with zipf=True the first name is the hot one.
_EVENT_TYPES: tuple[tuple[str, Callable[[_Rnd, _User], dict], str], ...] = (
    ("App Launched", _empty, "client"),
    ("Product Viewed", _product, "client"),
    ("Notification Sent", _notification, "server"),
    ("Session Concluded", _session, "client"),
    ("Search", _search, "client"),
    ("Added To Cart", _added_to_cart, "client"),
    ("Notification Viewed", _notification, "client"),
    ("Charged", _charged, "client"),
    ("Video Played", _video, "client"),
    ("Notification Clicked", _notification, "client"),
    ("UTM Visited", _utm, "client"),
    ("50% Off Viewed", _offer, "client"),
    ("Level-Up/Bonus", _level_up, "client"),
    ("App Installed", _installed, "mobile"),
    ("Kauf abgeschlossen", _kauf, "client"),
    ("購入完了", _kounyuu, "client"),
    ("Rated 5★", _rated, "client"),
    ("App Uninstalled", _empty, "server"),
    ("Removed From Cart", _added_to_cart, "client"),
    ("Checkout Started", _generic, "client"),
    ("Wishlist Added", _product, "client"),
    ("Coupon Applied", _generic, "client"),
    ("Signed Up", _generic, "client"),
    ("Logged In", _generic, "client"),
    ("Logged Out", _generic, "client"),
    ("Screen Viewed", _generic, "client"),
    ("Category Viewed", _generic, "client"),
    ("Filter Applied", _search, "client"),
    ("Content Shared", _generic, "client"),
    ("Subscription Started", _generic, "client"),
    ("Subscription Cancelled", _generic, "client"),
    ("Payment Failed", _charged, "client"),
    ("Order Delivered", _generic, "server"),
    ("Review Submitted", _rated, "client"),
    ("Referral Sent", _generic, "client"),
    ("Song Played", _video, "client"),
    ("Size, Colour Chosen", _product, "client"),
    ("Tab #2 Opened", _generic, "client"),
    ("Q&A Viewed", _generic, "client"),
    ("What's New? Opened", _generic, "mobile"),
)
EVENT_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _EVENT_TYPES)


def _name_picker(rnd: _Rnd, zipf: bool, hot: float | None = None) -> Callable[[], int]:
    n = len(_EVENT_TYPES)
    if hot is not None:  # a `hot` share is the first name ("App Launched"), the rest uniform over the others
        return lambda: 0 if rnd() < hot else 1 + int(rnd() * (n - 1))
    if not zipf:
        return lambda: int(rnd() * n)
    cum = list(itertools.accumulate(1.0 / (k**ZIPF_A) for k in range(1, n + 1)))
    total = cum[-1]
    cut = bisect.bisect_right
    return lambda: min(cut(cum, rnd() * total), n - 1)


def _check_window(start_ts: int, end_ts: int) -> None:
    if not 0 <= start_ts < end_ts <= TS_LIMIT:
        raise ValueError(f"need 0 <= start_ts < end_ts <= {TS_LIMIT}, got [{start_ts}, {end_ts})")


def _spread(n: int, bad: int) -> list[int]:
    """Good-record index before which each bad record goes: evenly through the output."""
    return [(i + 1) * n // (bad + 1) for i in range(bad)]


def _interleave(good: Iterator[bytes], n: int, bad: int, make_bad: Callable[[int], bytes]) -> Iterator[bytes]:
    at = _spread(n, bad)
    b = 0
    for j, line in enumerate(good):
        while b < bad and at[b] == j:
            yield make_bad(b)
            b += 1
        yield line
    while b < bad:
        yield make_bad(b)
        b += 1


# ---------------------------------------------------------------------------------------------------------
# Events


_TAILS = 6  # device states (network, place) per user


def _ct_tails(rnd: _Rnd, u: _User) -> tuple[dict, ...]:
    """A few sets of the per-event `ct_*` properties of one user: built once, picked per event."""
    tails = []
    for _ in range(_TAILS):
        if u.platform == "Web":
            tail: dict[str, Any] = {"Url": _pick(rnd, _URLS), "Referrer": _pick(rnd, _REFERRERS)}
        else:
            wifi = rnd() < 0.55
            bt = rnd() < 0.5
            tail = {
                "ct_connected_to_wifi": ("true" if wifi else "false") if u.legacy else wifi,
                "ct_network_type": "WiFi" if wifi else _pick(rnd, _NETWORK_TYPES),
                "ct_bluetooth_enabled": ("true" if bt else "false") if u.legacy else bt,
            }
        tail.update(u.ct)
        lat = None if u.lat is None else round(u.lat + (rnd() - 0.5) * 0.02, 6)
        tail["ct_latitude"] = lat
        tail["ct_longitude"] = None if lat is None else round(u.lon + (rnd() - 0.5) * 0.02, 6)
        tails.append(tail)
    return tuple(tails)


def _event_maker(
    rng: Random,
    users: list[_User],
    start_ts: int,
    end_ts: int,
    zipf: bool,
    late_fraction: float,
    hot: float | None = None,
) -> Callable[[], dict]:
    rnd = rng.random
    span = end_ts - start_ts
    pick_name = _name_picker(rnd, zipf, hot)
    nu = len(users)
    mobile = [u for u in users if u.platform != "Web"] or users
    nm = len(mobile)
    late = late_fraction
    no_capture = late_fraction + 0.005  # a few events carry no capturedAt (it defaults to ts)
    tails: dict[int, tuple[dict, ...]] = {}

    def make() -> dict:
        name, build, kind = _EVENT_TYPES[pick_name()]
        u = mobile[int(rnd() * nm)] if kind == "mobile" else users[int(rnd() * nu)]
        ts = start_ts + int(rnd() * span)
        rec: dict[str, Any] = {"eventName": name, "ts": ts}
        r = rnd()
        if r < late:
            rec["capturedAt"] = ts + 3600 + int(rnd() * 169200)  # 1 hour to 2 days late
        elif r >= no_capture:
            rec["capturedAt"] = ts + int(rnd() * rnd() * 12)
        rec["profile"] = u.profile
        api = kind != "mobile" and rnd() < 0.04  # uploaded through the server API: no device
        if kind == "server" or api:
            props = build(rnd, u)
            props["CT Source"] = "API" if api else "Campaign" if "Notification" in name else "Mobile"
            rec["eventProps"] = props
            return rec
        rec["deviceInfo"] = u.device
        props = {"CT Source": "Web" if u.platform == "Web" else "Mobile"}
        props.update(build(rnd, u))
        tail = tails.get(u.idx)
        if tail is None:
            tail = tails[u.idx] = _ct_tails(rnd, u)
        props.update(tail[int(rnd() * _TAILS)])
        rec["eventProps"] = props
        return rec

    return make


def _bad_event(kind: int, cycle: int, rec: dict, rnd: _Rnd) -> bytes:
    """Turn a good event into a bad one of EVENT_BAD_KINDS[kind]."""
    if kind == 0:
        line = orjson.dumps(rec)
        return line[: max(1, len(line) // 2)]
    if kind == 1:
        rec["eventProps"]["Comment"] = "__BAD_UTF8__"
        return orjson.dumps(rec).replace(b"__BAD_UTF8__", b"Tr\xe8s bien \xff\xfe")
    if kind == 2:
        del rec["eventName"]
    elif kind == 3:
        rec["eventName"] = (12345, ["Charged"], True)[cycle % 3]
    elif kind == 4:
        rec["ts"] = rec["ts"] * 1000 + int(rnd() * 1000)
    elif kind == 5:
        rec["ts"] = str(rec["ts"])
    elif kind == 6:
        del rec["ts"]
    elif kind == 7:
        rec["eventProps"]["Price"] = "__NAN__"
        return orjson.dumps(rec).replace(b'"__NAN__"', (b"NaN", b"Infinity", b"-Infinity")[cycle % 3])
    elif kind == 8:
        rec["eventProps"]["Amount"] = "__BIG__"
        return orjson.dumps(rec).replace(b'"__BIG__"', b"99999999999999999999")
    elif kind == 9:
        rec["eventProps"] = ("Items: 3", ["Items", 3], 42)[cycle % 3]
    elif kind == 10:
        rec["eventName"] = ""
    elif kind == 11:
        rec["eventName"] = ("Added\tTo Cart", "Charged\x00", "App Launched\x7f")[cycle % 3]
    else:
        rec["eventName"] = "Very Long Event " + "x" * (MAX_EVENT_NAME - 15)
    return orjson.dumps(rec)


def generate_events(
    n: int,
    *,
    seed: int = 7,
    start_ts: int,
    end_ts: int,
    zipf: bool = False,
    bad: int = 0,
    late_fraction: float = 0.03,
    profiles: int = 1000,
    hot: float | None = None,
) -> Iterator[bytes]:
    """Yield `n` good event lines plus `bad` bad ones (compact JSON, no newline), the same for a seed.

    Every good event has `ts` in [start_ts, end_ts). `capturedAt` is `ts` plus a few seconds, 1 hour to
    2 days later for a `late_fraction` share, and absent for 0.5% (it then defaults to `ts`). Users are
    drawn from a pool of `profiles` (the same pool `generate_profiles` writes). Event names are uniform
    over EVENT_NAMES, or Zipf-distributed (a = 1.2, "App Launched" hot) with `zipf`, or, with `hot` (a share
    in [0, 1], not with `zipf`), that share is "App Launched" and the rest uniform over the other names. Bad
    lines cycle over EVENT_BAD_KINDS and are spread evenly between the good ones, which they leave unchanged.
    """
    _check_window(start_ts, end_ts)
    if n < 0 or bad < 0 or profiles < 1 or not 0 <= late_fraction <= 0.99:
        raise ValueError("need n >= 0, bad >= 0, profiles >= 1 and 0 <= late_fraction <= 0.99")
    if hot is not None and (zipf or not 0 <= hot <= 1):
        raise ValueError("hot is a share in [0, 1] and excludes zipf")
    users = _users(seed, profiles)
    make = _event_maker(Random(f"ctexport-events-{seed}"), users, start_ts, end_ts, zipf, late_fraction, hot)
    bad_rng = Random(f"ctexport-bad-events-{seed}")
    make_bad_base = _event_maker(bad_rng, users, start_ts, end_ts, zipf, late_fraction, hot)
    dumps = orjson.dumps

    def good() -> Iterator[bytes]:
        for _ in range(n):
            yield dumps(make())

    def make_bad(i: int) -> bytes:
        rec = make_bad_base()
        # the base may share the user's dicts: copy what the mutation touches
        rec["eventProps"] = dict(rec.get("eventProps") or {})
        k = len(EVENT_BAD_KINDS)
        return _bad_event(i % k, i // k, rec, bad_rng.random)

    return _interleave(good(), n, bad, make_bad)


# ---------------------------------------------------------------------------------------------------------
# Profiles


def _profile_record(rnd: _Rnd, u: _User, version: int, updated: int, start_ts: int) -> dict:
    p = u.profile
    place = u.place
    email = p.get("email")
    if email and version > 0 and rnd() < 0.1:
        email = "new." + email  # a later version changed the address
    rec: dict[str, Any] = {
        "objectId": u.object_id,
        "identity": p["identity"],
        "all_identities": p["all_identities"],
        "name": p.get("name"),
        "email": email,
        "phone": p.get("phone"),
        "gender": u.gender,
        "dob": u.dob,
        "platform": u.platform,
        "profileProps": {
            "MSG-email": rnd() < 0.8,
            "MSG-push": rnd() < 0.7,
            "MSG-sms": rnd() < 0.5,
            "MSG-whatsapp": rnd() < 0.3,
            "Customer Type": _pick(rnd, _TIERS),
            "Total Spend": round(rnd() * 2000 * (version + 1), 2),
            "Orders": int(rnd() * 20) + version,
            "Preferred Language": place[5],
            "Time Zone": place[6],
            "Interests": [_pick(rnd, _INTERESTS) for _ in range(int(rnd() * 4))],
            "Address": {"city": place[0], "pin": None if rnd() < 0.5 else f"{int(rnd() * 999999):06d}"},
            "Last App Version": u.device.get("app_version"),
            "Nickname": None if rnd() < 0.6 else _pick(rnd, ("Ninja 🥷", "ß-Meister", "小明", "=1+1")),
        },
        "createdAt": None if u.created is None else max(0, start_ts - u.created),
        "updatedAt": updated,
    }
    return rec


def _bad_profile(kind: int, rec: dict, rnd: _Rnd) -> bytes:
    if kind == 0:
        del rec["objectId"]
    elif kind == 1:
        del rec["updatedAt"]
    elif kind == 2:
        rec["updatedAt"] = rec["updatedAt"] * 1000 + int(rnd() * 1000)
    else:
        line = orjson.dumps(rec)
        return line[: max(1, len(line) // 2)]
    return orjson.dumps(rec)


def generate_profiles(
    n: int, *, seed: int = 7, start_ts: int, end_ts: int, versions: float = 1.3, bad: int = 0
) -> Iterator[bytes]:
    """Yield `n` good profile records plus `bad` bad ones (compact JSON lines), the same for a seed.

    The `n` records are versions of ceil(n / versions) distinct objectIds (the first users of the pool
    `generate_events` draws from), in shuffled order; each has `updatedAt` in [start_ts, end_ts), and a few
    extra versions repeat an earlier `updatedAt` of their objectId (a tie, broken downstream by the bytes).
    Bad lines cycle over PROFILE_BAD_KINDS, spread evenly, and leave the good ones unchanged.
    """
    _check_window(start_ts, end_ts)
    if n < 0 or bad < 0 or versions < 1:
        raise ValueError("need n >= 0, bad >= 0 and versions >= 1")
    distinct = max(1, math.ceil(n / versions))
    users = _users(seed, distinct)
    rng = Random(f"ctexport-profiles-{seed}")
    rnd = rng.random
    span = end_ts - start_ts
    owners = list(range(min(n, distinct))) + [int(rnd() * distinct) for _ in range(n - distinct)]
    rng.shuffle(owners)
    bad_rng = Random(f"ctexport-bad-profiles-{seed}")

    def good() -> Iterator[bytes]:
        first: dict[int, int] = {}  # objectId index -> updatedAt of its first version
        count: dict[int, int] = {}  # objectId index -> versions so far
        for idx in owners:
            version = count.get(idx, 0)
            count[idx] = version + 1
            updated = first[idx] if version and rnd() < 0.05 else start_ts + int(rnd() * span)
            first.setdefault(idx, updated)
            yield orjson.dumps(_profile_record(rnd, users[idx], version, updated, start_ts))

    def make_bad(i: int) -> bytes:
        brnd = bad_rng.random
        u = users[int(brnd() * distinct)]
        rec = _profile_record(brnd, u, 0, start_ts + int(brnd() * span), start_ts)
        return _bad_profile(i % len(PROFILE_BAD_KINDS), rec, brnd)

    return _interleave(good(), n, bad, make_bad)


# ---------------------------------------------------------------------------------------------------------
# Checking records against SPEC section 1 (for the typed layouts, which cannot hold bad records)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIGITS_AS_NINE = bytes.maketrans(b"0123456789", b"9999999999")
_NINETEEN_DIGITS = b"9" * 19  # the shortest integer literal that can pass 64 bits


def _strict_int(text: str) -> int:
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("integer beyond 64 bits")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(value: Any) -> bool:
    """No NaN, Infinity or integer beyond 64 bits anywhere in a parsed value (dict input)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _parse(item: bytes | str | dict) -> dict | None:
    """The record as a dict, or None when it is not a JSON object of finite numbers and 64-bit integers."""
    if isinstance(item, dict):
        return item if _finite(item) else None
    if isinstance(item, str):
        item = item.encode("utf-8", "surrogatepass")
    try:
        rec = orjson.loads(item)  # rejects invalid UTF-8, NaN and Infinity
        if _NINETEEN_DIGITS in item.translate(_DIGITS_AS_NINE):
            # orjson reads an integer beyond 64 bits as a float; the stdlib parser sees the digits
            json.loads(item, parse_int=_strict_int, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) else None


def _epoch(value: Any, required: bool) -> bool:
    if value is None:
        return not required
    return type(value) is int and 0 <= value < TS_LIMIT


def _object(value: Any) -> bool:
    return value is None or isinstance(value, dict)


def _text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def good_event(rec: dict) -> bool:
    """True when a parsed event record is good by SPEC section 1 (the size limits aside)."""
    name = rec.get("eventName")
    return (
        isinstance(name, str)
        and 1 <= len(name) <= MAX_EVENT_NAME
        and not _CONTROL.search(name)
        and _epoch(rec.get("ts"), True)
        and _epoch(rec.get("capturedAt"), False)
        and _object(rec.get("profile"))
        and _object(rec.get("deviceInfo"))
        and _object(rec.get("eventProps"))
    )


def good_profile(rec: dict) -> bool:
    """True when a parsed profile record is good by SPEC section 1 and fits the typed layout."""
    identity = rec.get("identity")
    ids = rec.get("all_identities")
    return (
        isinstance(rec.get("objectId"), str)
        and _epoch(rec.get("updatedAt"), True)
        and _epoch(rec.get("createdAt"), False)
        and (identity is None or isinstance(identity, str) or type(identity) is int)
        and (ids is None or (isinstance(ids, list) and all(isinstance(x, str) for x in ids)))
        and all(_text(rec.get(k)) for k in ("name", "email", "phone", "gender", "dob", "platform"))
        and _object(rec.get("profileProps"))
    )


# ---------------------------------------------------------------------------------------------------------
# Writers

_EVENT_OBJECTS = ("profile", "deviceInfo", "eventProps")


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def event_row(rec: dict) -> dict:
    """A good event in the typed (Avro and Parquet) layout: free-key objects as compact JSON text."""
    row = {"eventName": rec["eventName"], "ts": rec["ts"], "capturedAt": rec.get("capturedAt")}
    for key in _EVENT_OBJECTS:
        row[key] = _json_text(rec.get(key))
    return row


def profile_row(rec: dict) -> dict:
    """A good profile in the typed layout (Avro: `identity` keeps its string or long type)."""
    return {
        "objectId": rec["objectId"],
        "identity": rec.get("identity"),
        "all_identities": rec.get("all_identities"),
        "name": rec.get("name"),
        "email": rec.get("email"),
        "phone": rec.get("phone"),
        "gender": rec.get("gender"),
        "dob": rec.get("dob"),
        "platform": rec.get("platform"),
        "profileProps": _json_text(rec.get("profileProps")),
        "createdAt": rec.get("createdAt"),
        "updatedAt": rec["updatedAt"],
    }


_LAYOUT = {EVENTS: (good_event, event_row), PROFILES: (good_profile, profile_row)}


def _check_kind(kind: str) -> None:
    if kind not in _LAYOUT:
        raise ValueError(f"kind must be {EVENTS!r} or {PROFILES!r}, got {kind!r}")


def typed_rows(lines_or_records: Iterable[bytes | str | dict], kind: str) -> Iterator[dict]:
    """The good records of `kind` in the typed layout; bad ones are dropped."""
    _check_kind(kind)
    is_good, to_row = _LAYOUT[kind]
    for item in lines_or_records:
        rec = _parse(item)
        if rec is not None and is_good(rec):
            yield to_row(rec)


def avro_schema(kind: str) -> dict:
    """The Avro schema of `kind`, as shipped in transforms/schemas/."""
    _check_kind(kind)
    name = {EVENTS: "event.avsc", PROFILES: "profile.avsc"}[kind]
    return json.loads(importlib.resources.files("transforms").joinpath("schemas", name).read_text("utf-8"))


def write_jsonl(path: str | Path, lines: Iterable[bytes], gzip: bool = False) -> int:
    """Write lines, each ended by `\\n`; returns the count.

    gzip is level 1 (sample input: speed over size), with no file name and mtime 0, so the bytes repeat.
    """
    count = 0
    with open(path, "wb") as raw:
        out = gziplib.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) if gzip else raw
        try:
            for line in lines:
                out.write(line + b"\n")
                count += 1
        finally:
            if gzip:
                out.close()
    return count


def write_avro(path: str | Path, lines_or_records: Iterable[bytes | str | dict], kind: str) -> int:
    """Write the good records as Avro, in the layout of transforms/schemas/<kind>.avsc; returns the count.

    Bad records are skipped: a typed file cannot express them (no place for a string `ts`, a missing
    `eventName`, a truncated line). Deflate level 1 in blocks of about 1 MiB, and a fixed sync marker, so
    the same records give the same bytes.
    """
    schema = fastavro.parse_schema(avro_schema(kind))
    count = 0

    def rows() -> Iterator[dict]:
        nonlocal count
        for row in typed_rows(lines_or_records, kind):
            count += 1
            yield row

    with open(path, "wb") as out:
        fastavro.writer(
            out,
            schema,
            rows(),
            codec="deflate",
            codec_compression_level=1,
            sync_interval=1 << 20,
            sync_marker=b"ctexport-sample!",
            strict=True,
        )
    return count


def parquet_schema(kind: str) -> pa.Schema:
    """The Arrow schema of the Parquet input layout of `kind`."""
    _check_kind(kind)
    if kind == EVENTS:
        return pa.schema(
            [
                pa.field("eventName", pa.string(), nullable=False),
                pa.field("ts", pa.int64(), nullable=False),
                pa.field("capturedAt", pa.int64()),
                pa.field("profile", pa.string()),
                pa.field("deviceInfo", pa.string()),
                pa.field("eventProps", pa.string()),
            ]
        )
    return pa.schema(
        [
            pa.field("objectId", pa.string(), nullable=False),
            pa.field("identity", pa.string()),
            pa.field("all_identities", pa.list_(pa.string())),
            *(pa.field(k, pa.string()) for k in ("name", "email", "phone", "gender", "dob", "platform")),
            pa.field("profileProps", pa.string()),
            pa.field("createdAt", pa.int64()),
            pa.field("updatedAt", pa.int64(), nullable=False),
        ]
    )


def write_parquet(
    path: str | Path, lines_or_records: Iterable[bytes | str | dict], kind: str, row_group_size: int = 65536
) -> int:
    """Write the good records as Parquet (snappy), columns as in the Avro layout; bad records are skipped.

    Parquet has no union type, so `identity` is a string column: an integer identity is stored as its
    decimal digits. Returns the number of records written.
    """
    schema = parquet_schema(kind)
    names = schema.names
    count = 0
    rows = typed_rows(lines_or_records, kind)
    with pq.ParquetWriter(str(path), schema, compression="snappy") as writer:
        while batch := list(itertools.islice(rows, row_group_size)):
            columns = {name: [row[name] for row in batch] for name in names}
            if kind == PROFILES:
                columns["identity"] = [None if v is None else str(v) for v in columns["identity"]]
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            count += len(batch)
    return count


# ---------------------------------------------------------------------------------------------------------
# Command line


def _parse_time(text: str) -> int:
    if re.fullmatch(r"\d{8}(\d{6})?", text):
        dt = datetime.strptime(text, "%Y%m%d%H%M%S" if len(text) == 14 else "%Y%m%d")
    else:
        dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def _write(path: Path, fmt: str, lines: Iterable[bytes], kind: str) -> int:
    if fmt in ("jsonl", "jsonl.gz"):
        return write_jsonl(path, lines, gzip=fmt == "jsonl.gz")
    if fmt == "avro":
        return write_avro(path, lines, kind)
    return write_parquet(path, lines, kind)


def main(argv: list[str] | None = None) -> int:
    """Write sample events and profiles to a folder and print what was written."""
    parser = argparse.ArgumentParser(
        prog="python -m ctexport.generate", description="Write CleverTap-like sample events and profiles."
    )
    parser.add_argument("--out", required=True, help="folder to write to (created if missing)")
    parser.add_argument("--events", type=int, default=20000, help="good events (default 20000)")
    parser.add_argument("--profiles", type=int, default=2000, help="good profile records (default 2000)")
    parser.add_argument("--days", type=int, default=3, help="length of the event window in days (default 3)")
    parser.add_argument(
        "--end",
        help="end of the window, exclusive: yyyymmdd[HHMMSS] or ISO-8601, UTC (default: today 00:00 UTC)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--format", choices=FORMATS, default="jsonl")
    parser.add_argument("--files", type=int, default=2, help="files per kind (default 2)")
    parser.add_argument(
        "--bad",
        type=int,
        default=len(EVENT_BAD_KINDS),
        help=f"bad events, and bad profiles, inserted (default {len(EVENT_BAD_KINDS)}: one of each event kind); "
        "Avro and Parquet cannot hold them and skip them",
    )
    parser.add_argument("--zipf", action="store_true", help="Zipf-distributed event names (one hot name)")
    parser.add_argument(
        "--hot",
        type=float,
        metavar="FRACTION",
        help='this share of events is "App Launched", the rest uniform over the other names (not with --zipf)',
    )
    parser.add_argument(
        "--late_fraction", type=float, default=0.03, help="share of late captures (default 0.03)"
    )
    args = parser.parse_args(argv)

    problems = []
    for flag in ("events", "profiles", "bad"):
        if getattr(args, flag) < 0:
            problems.append(f"--{flag} must be 0 or more")
    if args.days < 1:
        problems.append("--days must be 1 or more")
    if args.files < 1:
        problems.append("--files must be 1 or more")
    if not 0 <= args.late_fraction <= 0.99:
        problems.append("--late_fraction must be between 0 and 0.99")
    if args.hot is not None and (args.zipf or not 0 <= args.hot <= 1):
        problems.append("--hot must be between 0 and 1, and not with --zipf")
    try:
        end_ts = _parse_time(args.end) if args.end else int(time.time()) // 86400 * 86400
    except ValueError:
        problems.append(f"--end {args.end!r} is not yyyymmdd[HHMMSS] or ISO-8601")
        end_ts = 0
    start_ts = end_ts - args.days * 86400
    if not problems and not 0 <= start_ts < end_ts <= TS_LIMIT:
        problems.append("--end and --days give a window outside 1970..9999")
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    window = (
        f"{datetime.fromtimestamp(start_ts, UTC):%Y-%m-%dT%H:%M:%SZ} .. "
        f"{datetime.fromtimestamp(end_ts, UTC):%Y-%m-%dT%H:%M:%SZ} [{start_ts}, {end_ts})"
    )
    print(f"window {window}, seed {args.seed}, format {args.format}")
    streams = {
        EVENTS: (
            args.events + args.bad,
            generate_events(
                args.events,
                seed=args.seed,
                start_ts=start_ts,
                end_ts=end_ts,
                zipf=args.zipf,
                hot=args.hot,
                bad=args.bad,
                late_fraction=args.late_fraction,
                profiles=max(1, math.ceil(args.profiles / 1.3)),
            ),
        ),
        PROFILES: (
            args.profiles + args.bad,
            generate_profiles(args.profiles, seed=args.seed, start_ts=start_ts, end_ts=end_ts, bad=args.bad),
        ),
    }
    total_bytes = 0
    for kind, (lines, stream) in streams.items():
        if lines == 0:
            continue
        written = 0
        for i in range(args.files):
            part = itertools.islice(stream, (i + 1) * lines // args.files - i * lines // args.files)
            path = out / f"{kind}-{i:05d}.{args.format}"
            count = _write(path, args.format, part, kind)
            size = path.stat().st_size
            written += count
            total_bytes += size
            print(f"{path}\t{count} records\t{size} bytes")
        skipped = lines - written
        note = f" ({skipped} bad records skipped: {args.format} cannot hold them)" if skipped else ""
        bad_note = f", {args.bad} of them bad" if args.format.startswith("jsonl") and args.bad else ""
        print(f"{kind}: {written} records in {args.files} files{bad_note}{note}")
    print(f"total {total_bytes} bytes in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
