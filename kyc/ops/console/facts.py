"""What a reviewer reads first about an account, from its stored signals and input.

Identity is shown masked exactly as kyc's logs mask it (kyc.security): the full email, phone
or IP never reaches a page. Signals hold no raw identifiers (only derived facts and keyed
hashes), so they are shown as they are.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from kyc.security import mask_email, mask_ip, mask_phone


class Fact(NamedTuple):
    family: str
    text: str
    risky: bool = False


def identity(signup_input: dict[str, Any] | None) -> dict[str, str]:
    data = signup_input or {}
    return {"email": mask_email(data.get("email")), "phone": mask_phone(data.get("phone")),
            "ip": mask_ip(data.get("ip"))}


def verification_target(kind: str, target: str | None) -> str:
    if not target:
        return "-"
    return mask_email(target) if kind == "email" else mask_phone(target) if kind == "phone" else "-"


# Velocity counts worth a reviewer's eye, and the count from which one is unusual.
_VELOCITY = (("ip_1h", "accounts on this IP in 1 h", 3), ("ip_prefix_24h", "accounts on this /24 in 24 h", 10),
             ("device_24h", "accounts on this device in 24 h", 2), ("email_24h", "accounts on this mailbox in 24 h", 2),
             ("email_template_24h", "accounts with this email shape in 24 h", 10),
             ("phone_range_24h", "accounts in this phone range in 24 h", 5),
             ("card_fingerprint_24h", "accounts on this card in 24 h", 2))


def signal_facts(signals: dict[str, Any]) -> list[Fact]:
    """A short, ordered list of facts, the unusual ones flagged."""
    facts: list[Fact] = []
    email, phone, ip = signals.get("email") or {}, signals.get("phone") or {}, signals.get("ip") or {}
    device, velocity, graph = signals.get("device") or {}, signals.get("velocity") or {}, signals.get("graph") or {}
    card, usage = signals.get("card") or {}, signals.get("usage") or {}
    if email:
        if email.get("domain"):
            facts.append(Fact("email", f"@{email['domain']}" + (" (free)" if email.get("free") else "")))
        if email.get("valid") is False:
            facts.append(Fact("email", "invalid address", True))
        if email.get("disposable"):
            facts.append(Fact("email", "disposable domain", True))
        if (email.get("local_randomness") or 0) >= 0.6:
            facts.append(Fact("email", f"random-looking name ({email['local_randomness']:.2f})", True))
    if phone:
        kind = phone.get("line_type") or "unknown line"
        facts.append(Fact("phone", f"{kind}, {phone.get('region') or '??'}", bool(phone.get("voip"))))
    if ip:
        where = ", ".join(str(v) for v in (ip.get("country"), ip.get("asn_org")) if v)
        if where:
            facts.append(Fact("ip", where))
        for flag, text in (("hosting", "hosting network"), ("vpn", "VPN"), ("tor", "Tor exit"), ("proxy", "proxy"),
                           ("private", "private address"), ("documentation", "documentation address (a test's)")):
            if ip.get(flag):
                facts.append(Fact("ip", text, True))
        if ip.get("phone_country_mismatch"):
            facts.append(Fact("ip", "phone from another country", True))
        if ip.get("timezone_country_mismatch"):
            facts.append(Fact("ip", "browser time zone elsewhere", True))
    if device:
        what = " on ".join(str(v) for v in (device.get("browser"), device.get("os")) if v)
        if what:
            facts.append(Fact("device", what))
        if device.get("headless"):
            facts.append(Fact("device", "headless browser", True))
        elif device.get("bot"):
            facts.append(Fact("device", "bot user agent", True))
        elif device.get("non_browser"):
            facts.append(Fact("device", "not a browser", True))
        fill = device.get("form_fill_ms")
        if isinstance(fill, (int, float)):
            facts.append(Fact("device", f"form filled in {fill / 1000:.1f} s", fill < 2000))
    if card:
        what = " ".join(str(v) for v in (card.get("brand"), card.get("funding")) if v)
        if what:
            facts.append(Fact("card", f"{what} card" + (f", issued {card['issuer_country']}"
                                                          if card.get("issuer_country") else ""),
                              card.get("funding") == "prepaid"))
    for key, text, unusual in _VELOCITY:
        value = velocity.get(key)
        if isinstance(value, int) and value >= unusual:
            facts.append(Fact("velocity", f"{value:,} {text}", True))
    size = graph.get("cluster_size")
    if isinstance(size, int) and size > 1:
        grown = graph.get("cluster_growth_24h") or 0
        facts.append(Fact("cluster", f"cluster of {size:,} when scored" + (f", +{grown:,} in 24 h" if grown else ""),
                          size >= 5))
        if graph.get("linked_by_work_only"):
            facts.append(Fact("cluster", "linked only by what people working together share (templates, network)"))
        if graph.get("cluster_labeled_fraud"):
            facts.append(Fact("cluster", f"{graph['cluster_labeled_fraud']} labeled fraud in the cluster", True))
    if usage.get("requests_today"):
        facts.append(Fact("usage", f"{usage['requests_today']:,} requests today"))
    return facts
