"""The graph's model (kyc.graph.core): the table of identifier kinds and the clustering rule
linking and rebuild both follow."""

from __future__ import annotations

from kyc.graph import LINK_KINDS, STRONG, WEAK, WEAK_KINDS_NEEDED, components
from kyc.models import GraphNode


def test_every_linking_kind_has_a_strength_and_fits_the_node_column():
    width = GraphNode.__table__.c.kind.type.length
    assert set(LINK_KINDS.values()) == {"strong", "weak"}
    assert all(0 < len(kind) <= width for kind in LINK_KINDS)
    assert STRONG | WEAK == set(LINK_KINDS) and not STRONG & WEAK


def test_a_strong_kind_links_on_one_value_a_weak_kind_only_with_enough_others():
    strong = sorted(STRONG)[0]
    weak = sorted(WEAK)[:WEAK_KINDS_NEEDED]
    edges = [((strong, "s1"), "a"), ((strong, "s1"), "b"),                      # a-b: one strong value
             ((weak[0], "w1"), "c"), ((weak[0], "w1"), "d"),                    # c-d: one weak kind only
             *(((kind, "w2"), account) for kind in weak for account in ("e", "f"))]   # e-f: enough weak kinds
    groups = {frozenset(g) for g in components(edges, ["g"]).groups().values()}
    assert groups == {frozenset("ab"), frozenset("c"), frozenset("d"), frozenset("ef"), frozenset("g")}


def test_a_member_is_linked_by_work_only_when_its_other_shared_kinds_could_not_link_it():
    from kyc.graph.core import linked_by_work_only

    assert linked_by_work_only({"prompt", "activity_prefix_day"})      # an office's or a campus's network
    assert linked_by_work_only({"email_template", "activity_prefix_day"})   # staff's email shape at the office
    assert linked_by_work_only({"prompt"})
    assert linked_by_work_only({"prompt", "ip_prefix_day"})            # the signup's network alone links nobody
    assert not linked_by_work_only({"prompt", "device"})               # an identity: one device
    assert not linked_by_work_only({"prompt", "api_key"})
    assert not linked_by_work_only({"prompt", "ip_prefix_day", "email_template"})   # weak kinds enough without
    assert not linked_by_work_only({"ip_prefix_day", "email_template"})            # no shared work at all
    assert not linked_by_work_only(set())
