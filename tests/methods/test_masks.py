import torch

from aapp.models.adapters import Geometry
from aapp.methods.masks import LayerMask, top_k

G = Geometry("llama", 2, 32, 8, 2, 4, 16, 10, "silu", 0.5, (None, None))  # groups of 4


def test_top_k_deterministic_and_protected():
    s = torch.tensor([0.5, 3.0, 1.0, 3.0, 0.1])
    assert top_k(s, 2).tolist() == [1, 3]
    assert top_k(s, 2, protect=torch.tensor([4])).tolist() == [1, 4]
    # More protected than k: the best protected win.
    assert top_k(s, 1, protect=torch.tensor([0, 4])).tolist() == [0]


def test_kv_head_dropped_only_when_all_its_queries_are():
    m = LayerMask.from_kept(torch.tensor([5, 0, 1]), torch.tensor([3, 1]), G)
    assert m.heads.tolist() == [0, 1, 5] and m.channels.tolist() == [1, 3]
    assert m.kv_heads.tolist() == [0, 1]
    m2 = LayerMask.from_kept(torch.tensor([4, 7]), torch.tensor([0]), G)
    assert m2.kv_heads.tolist() == [1]


def test_rows_and_kv_mapping():
    m = LayerMask.from_kept(torch.tensor([0, 1, 5]), torch.tensor([0]), G)
    assert m.q_rows(4).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 20, 21, 22, 23]
    assert m.kv_rows(4).tolist() == list(range(8))
    # Two queries on kv head 0, one on kv head 1: uneven, so queries are padded to 2 per kv head.
    slots, width = m.query_slots(G)
    assert width == 2 and slots.tolist() == [0, 1, 2]
    m3 = LayerMask.from_kept(torch.tensor([1, 4, 5, 6]), torch.tensor([0]), G)  # 1 + 3 queries
    slots, width = m3.query_slots(G)
    assert width == 3 and slots.tolist() == [0, 3, 4, 5]
    even = LayerMask.from_kept(torch.tensor([0, 1, 4, 5]), torch.tensor([0]), G)
    assert even.query_slots(G) is None


def test_top_heads_in_groups_pins_group_count():
    from aapp.methods.masks import top_heads_in_groups

    # 8 heads in 4 groups of 2; unprotected top-3 = heads 0, 1, 2 -> groups {0, 1}
    s = torch.tensor([9.0, 8.0, 7.0, 1.0, 0.5, 0.4, 0.3, 0.2])
    free = top_k(s, 3)
    assert free.tolist() == [0, 1, 2]
    got = top_heads_in_groups(s, 3, 2, 2, protect=torch.tensor([6]))
    assert 6 in got.tolist() and len(got) == 3
    assert len(set((got // 2).tolist())) == 2  # still two kv groups, not three
    # Without protection it agrees with plain top-k whenever top-k spans n_groups groups.
    assert top_heads_in_groups(s, 3, 2, 2).tolist() == [0, 1, 2]
    # More protected groups than allowed: the best protected groups win.
    got = top_heads_in_groups(s, 2, 2, 1, protect=torch.tensor([4, 7]))
    assert len(set((got // 2).tolist())) == 1 and 4 in got.tolist()


def test_top_heads_in_groups_random_invariants():
    from aapp.methods.masks import top_heads_in_groups

    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        gs = int(torch.randint(1, 5, (1,), generator=g))
        n = gs * int(torch.randint(1, 6, (1,), generator=g))
        s = torch.randn(n, generator=g)
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        n_groups = len(torch.unique(top_k(s, k) // gs))
        prot = torch.randperm(n, generator=g)[: int(torch.randint(0, n + 1, (1,), generator=g))]
        got = top_heads_in_groups(s, k, gs, n_groups, protect=prot)
        assert len(got) == k and len(torch.unique(got)) == k
        assert len(torch.unique(got // gs)) == n_groups
