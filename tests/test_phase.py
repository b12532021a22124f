"""Phase classification: each region, its boundaries, degenerate cases (THEORY.md §2)."""

import json
import math

import pytest

from dropdyn.phase import EFFECTS, classify, scaling, set_distances


def at(n, a, b):
    return classify(n, n ** (-a), n ** (-b), embedding="powers")


@pytest.mark.parametrize(
    "a, b, phase",
    [
        (0.6, 0.1, "I"), (2.0, 0.5, "I"), (1.5, 0.0, "I"), (0.8, 0.5, "I"),
        (2.0, 1.0, "II"), (1.6, 1.0, "II"),
        (0.5, 0.5, "III"), (0.3, 0.3, "III"), (0.75, 0.75, "III"),
        (1.0, 1.0, "IV"),
        (0.0, 0.0, "V"),
        (0.3, 0.6, "degenerate"), (2.0, 1.5, "degenerate"), (0.0, 0.4, "degenerate"),
    ],
)
def test_regions_at_large_width(a, b, phase):
    p = at(10**8, a, b)
    assert p.phase == phase, p.explain()
    assert math.isclose(p.a, a, abs_tol=1e-12) and math.isclose(p.b, b, abs_tol=1e-12)
    assert p.effects == EFFECTS[phase]


def test_alpha_beta_and_reasons():
    p = classify(1000, 0.01, 0.5, embedding="powers")
    assert math.isclose(p.alpha, 0.02) and math.isclose(p.beta, 0.002)
    assert classify(10**6, 1e-3, 1e-4, embedding="powers").reason.startswith("α = τ/q → ∞")
    assert classify(10**6, 1e-9, 1e-8, embedding="powers").reason.startswith("β = 1/(nq) → ∞")


def test_effects_follow_the_theory():
    assert at(10**8, 1.0, 1.0).effects == dict(thinning=True, penalty=True, forward_noise=True)
    assert at(10**8, 2.0, 1.0).effects == dict(thinning=False, penalty=True, forward_noise=False)
    assert at(10**8, 0.5, 0.5).effects == dict(thinning=True, penalty=False, forward_noise=False)
    assert not any(at(10**8, 0.8, 0.2).effects.values())


def test_boundaries_warn_and_tolerance_shrinks_with_width():
    # 0.07 off the III segment: matched at width 1000 (tol 0.16) with a warning, I at width
    # 10^12 (tol 0.04)
    near = at(1000, 0.6, 0.5)
    assert near.phase == "III" and any("matched within" in w for w in near.warnings)
    assert at(10**12, 0.6, 0.5).phase == "I"
    # a point of I close to the III segment: a warning that the width cannot decide
    p = at(1000, 0.8, 0.5)
    assert p.phase == "I" and any("not decided" in w and "III" in w for w in p.warnings)
    # deep inside I: no warning
    assert at(10**8, 1.5, 0.3).warnings == []
    # the "not decided" band is 2·tol wide (tol = log 3 / log 10⁴ = 0.119 here): points of I at
    # 0.2 and 0.3 from the III segment, on either side of 0.239; the segment is I's border with
    # the degenerate region too, so both are named
    for off, warns in ((0.2, True), (0.3, False)):
        d = off / math.sqrt(2)
        p = at(10**4, 0.5 + d, 0.5 - d)
        assert p.phase == "I" and any("within 0.239 of III, degenerate:" in w for w in p.warnings) == warns
        assert len(p.warnings) == warns, p.warnings
    # the small-width warning starts below width 100
    small = [any("is small" in w for w in classify(n, 0.5, 0.5, embedding="powers").warnings) for n in (99, 100)]
    assert small == [True, False]
    # practical constants (τ = q = 0.5) at width 1000 are "order one": phase V
    assert classify(1000, 0.5, 0.5, embedding="powers").phase == "V"


def test_points_on_a_set_get_no_warning_unless_other_sets_end_there():
    for a, b, phase in ((0.5, 0.5, "III"), (2.0, 1.0, "II")):
        p = at(10**8, a, b)
        assert p.phase == phase and p.warnings == [], p.warnings
    # II and III end at IV, and III and I's border at V: their points are all within 2·tol
    for a, near in ((1.0, "II, III"), (0.0, "III")):
        p = at(10**8, a, a)
        assert [w.split(": at")[0] for w in p.warnings] == [f"(a, b) = ({a:.3f}, {a:.3f}) is within 0.119 of {near}"]


def test_the_III_segment_is_open_at_IV():
    """(1.005, 0.93) at width 10⁸ (tol 0.060): 0.053 from the III segment, but past its end
    at (1, 1) in a (a ≥ 1) and 0.070 from IV and II, so it is in I (b < min(a, 1))."""
    p = at(10**8, 1.005, 0.93)
    assert p.phase == "I" and p.distances["III"] < 0.06 < min(p.distances["IV"], p.distances["II"]), p.distances


def test_exponents_of_unit_lr_and_keep_are_plus_zero():
    p = classify(100, 1.0, 1.0, embedding="powers")
    assert p.phase == "V" and math.copysign(1, p.a) == math.copysign(1, p.b) == 1  # 0.0, not -0.0
    assert '"a": 0.0' in json.dumps(p.to_dict())


def test_width_and_factor_limits():
    assert classify(2, 0.5, 0.5, embedding="powers").width == 2
    assert classify(2**53, 1e-3, 0.5, embedding="powers").phase == "I"
    with pytest.raises(ValueError, match="width must be at most 2\\^53, got 9007199254740993"):
        classify(2**53 + 1, 1e-3, 0.5, embedding="powers")
    assert classify(10**6, 1e-3, 0.5, factor=1.01, embedding="powers").phase == "I"  # any factor above 1


def test_distances_are_zero_on_their_sets():
    d = set_distances(0.5, 0.5)
    assert d["III"] < 1e-12 and d["I"] == 0 and d["degenerate"] == 0 and d["V"] > 0.7
    assert set_distances(3.0, 1.0)["II"] < 1e-12
    assert set_distances(1.0, 0.2)["I"] == 0 and set_distances(1.0, 0.2)["degenerate"] > 0


@pytest.mark.parametrize("a, b, expected", [
    # every distance by hand: V is the origin, IV the point (1, 1), III the diagonal segment
    # from 0 to (1, 1), II the ray b = 1 from (1, 1) rightwards, I the region
    # 0 ≤ b ≤ min(a, 1), the degenerate set b ≥ a or b ≥ 1
    (0.5, 0.2, dict(V=math.hypot(0.5, 0.2), IV=math.hypot(0.5, 0.8), III=0.3 / math.sqrt(2),
                    II=math.hypot(0.5, 0.8), I=0.0, degenerate=0.3 / math.sqrt(2))),
    (2.0, 0.9, dict(V=math.hypot(2.0, 0.9), IV=math.hypot(1.0, 0.1), III=math.hypot(1.0, 0.1), II=0.1, I=0.0,
                    degenerate=0.1)),
    (-1.0, 0.5, dict(V=math.hypot(1.0, 0.5), IV=math.hypot(2.0, 0.5), III=math.hypot(1.0, 0.5),
                     II=math.hypot(2.0, 0.5), I=math.hypot(1.0, 0.5), degenerate=0.0)),
    (3.0, -2.0, dict(V=math.hypot(3.0, 2.0), IV=math.hypot(2.0, 3.0), III=2.5 * math.sqrt(2), II=3.0, I=2.0,
                     degenerate=3.0)),
])
def test_set_distances_against_hand_computed_values(a, b, expected):
    d = set_distances(a, b)
    assert d.keys() == expected.keys()
    for name, value in expected.items():
        assert abs(d[name] - value) < 1e-12, (name, d[name], value)


def test_distances_to_the_two_regions_against_a_dense_grid():
    """The distance to region I {0 ≤ b ≤ min(a, 1)} and to the degenerate region {b ≥ a or
    b ≥ 1}, against the nearest of their points on a grid of spacing 0.01 (never nearer
    than the true distance, at most 0.01/√2 farther), from 60 points around them."""
    import numpy as np

    A, B = np.meshgrid(np.arange(-300, 800) / 100, np.arange(-300, 400) / 100)  # 0 and 1 exactly on it
    regions = {"I": (B >= 0) & (B <= np.minimum(A, 1)), "degenerate": (B >= A) | (B >= 1)}
    points = np.random.default_rng(0).uniform([-2, -2], [4, 3], size=(60, 2))
    for name, inside in regions.items():
        ga, gb = A[inside], B[inside]
        for a, b in points:
            grid = float(np.sqrt(((ga - a) ** 2 + (gb - b) ** 2).min()))
            d = set_distances(float(a), float(b))[name]
            assert d - 1e-9 <= grid <= d + 0.0071, (name, a, b, d, grid)


@pytest.mark.parametrize("bad, match", [
    (dict(width=1), "width must be an integer >= 2"),
    (dict(lr=0), "lr must be a finite positive"),
    (dict(lr=float("inf")), "lr must be a finite positive"),
    (dict(keep=1.5), r"keep must be in \(0, 1\]"),
    (dict(keep=0), r"keep must be in \(0, 1\]"),
    (dict(factor=1.0), "factor must be > 1"),
    (dict(embedding="natural"), "embedding must be 'fixed', 'powers' or a pair of exponents"),
    (dict(embedding=(0.5,)), "embedding must be 'fixed', 'powers' or a pair"),
    (dict(embedding=(float("nan"), 0.5)), "exponent a must be a finite number"),
    (dict(embedding=(0.5, -0.1)), "b must be >= 0"),
])
def test_bad_input(bad, match):
    args = dict(width=100, lr=0.1, keep=0.5) | bad
    with pytest.raises(ValueError, match=match):
        classify(**args)


@pytest.mark.parametrize("a, b, phase", [(0.8, 0.3, "I"), (1.5, 0.0, "I"), (1.5, 1.0, "II"), (0.4, 0.4, "III"),
                                          (1.0, 1.0, "IV"), (0.0, 0.0, "V"), (0.2, 0.3, "degenerate"),
                                          (0.0, 0.4, "degenerate"), (2.0, 1.2, "degenerate")])
def test_family_phase(a, b, phase):
    from dropdyn.phase import family_phase

    assert family_phase(a, b) == phase
    if phase != "degenerate":
        assert at(10**9, a, b).phase == phase  # agrees with the finite-width classification


def test_scaling_family():
    lr, q = scaling(10_000, 0.5, 0.25, c_lr=2.0)
    assert math.isclose(lr, 0.02) and math.isclose(q, 0.1)
    assert scaling(100, 1.0, 0.5) == pytest.approx((0.01, 0.1), rel=1e-14)  # constants 1 by default
    assert scaling(100, 0.5, 0.0) == pytest.approx((0.1, 1.0), rel=1e-14)  # keep 1 is in (0, 1]
    assert scaling(1, 0.5, 0.5) == (1.0, 1.0)
    with pytest.raises(ValueError, match="keep = c_keep·n\\^\\(−b\\) = 0 at width 10 is outside"):
        scaling(10, 0.5, 400.0)  # q underflows to 0
    with pytest.raises(ValueError, match="outside"):
        scaling(100, 0.5, 0.1, c_keep=3.0)


def test_cli_json_and_diagram(tmp_path, dropdyn_cli):
    p = dropdyn_cli("phase", "--width", "10000", "--lr", "0.01", "--keep", "0.01", "--json")
    assert p.returncode == 0
    out = json.loads(p.stdout)
    assert (out["phase"], out["embedding"]) == ("V", "fixed") and {"alpha", "beta", "a", "b", "phase"} <= set(out)
    for flags, phase, embedding in ((["--embedding", "powers"], "III", "powers"),
                                    (["--exponents", "0.75,0.25"], "I", "exponents a=0.75, b=0.25")):
        out = json.loads(dropdyn_cli("phase", "--width", "10000", "--lr", "0.01", "--keep", "0.01", "--json",
                                     *flags).stdout)
        assert (out["phase"], out["embedding"]) == (phase, embedding)
    for flags, match in ((["--exponents", "x"], "--exponents must be A,B"),
                         (["--exponents", "1,1", "--embedding", "powers"], "not both"),
                         (["--exponents", "1,-1"], "b must be >= 0")):
        p = dropdyn_cli("phase", "--width", "100", "--lr", "0.1", "--keep", "0.5", *flags)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and match in p.stderr, p.stderr
    p = dropdyn_cli("phase", "--width", "10", "--lr", "0", "--keep", "0.5")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "lr" in p.stderr
    png = tmp_path / "d.png"
    p = dropdyn_cli("phase-diagram", "--out", png, "--mark", "1000,0.01,0.5", "--mark", "10000,0.01,0.01")
    assert p.returncode == 0 and png.stat().st_size > 10_000
    p = dropdyn_cli("phase-diagram", "--out", png, "--mark", "1000,0.01")
    assert p.returncode == 2 and "--mark must be WIDTH,LR,KEEP" in p.stderr


@pytest.mark.parametrize("lr, keep", [(0.1, 0.5), (0.2, 0.5), (1.0, 0.5), (10.0, 0.5), (1.0, 0.3), (1e-3, 0.01)])
def test_fixed_tau_and_q_are_phase_v_whatever_their_size(lr, keep):
    """The default embedding holds τ and q as n → ∞: every single setting is phase V (the
    reading as powers of n flips I → III → V → degenerate over τ = 0.1 … 10 at q = 0.5,
    width 5000); the answer names its embedding, and the powers reading when it differs."""
    ph = classify(5000, lr, keep)
    assert (ph.phase, ph.a, ph.b, ph.embedding) == ("V", 0.0, 0.0, "fixed")
    assert "embedding: τ and q held fixed as n → ∞" in ph.explain()
    powers = classify(5000, lr, keep, embedding="powers")
    assert powers.embedding == "powers" and "exponents read off this width" in powers.explain()
    noted = [w for w in ph.warnings if "read as powers of n" in w]
    assert (noted != []) == (powers.phase != "V") and (not noted or powers.phase in noted[0])


def test_the_powers_reading_of_constant_lr_flips_with_its_size():
    assert [classify(5000, lr, 0.5, embedding="powers").phase for lr in (0.1, 0.2, 1.0, 10.0)] == \
        ["I", "III", "V", "degenerate"]


@pytest.mark.parametrize("a, b", [(0.5, 0.5), (1.0, 1.0), (2.0, 1.0), (0.75, 0.25), (0.0, 0.0), (0.3, 0.6)])
def test_given_exponents_are_the_family_phase(a, b):
    from dropdyn.phase import family_phase

    ph = classify(5000, 1.0, 0.5, embedding=(a, b))
    assert (ph.phase, ph.a, ph.b) == (family_phase(a, b), a, b)
    assert ph.embedding == f"exponents a={a:g}, b={b:g}" and ph.embedding in ph.explain()


def test_an_activation_outside_the_theory_gets_one_warning_line():
    from dropdyn import InputError
    from dropdyn.phase import classify

    plain = classify(1000, 0.1, 0.5)
    for act in ("tanh", "sigmoid", "erf", None):
        assert classify(1000, 0.1, 0.5, activation=act).warnings == plain.warnings
    for act in ("relu", "softplus", "identity"):
        ph = classify(1000, 0.1, 0.5, activation=act)
        extra = [w for w in ph.warnings if w not in plain.warnings]
        assert len(extra) == 1 and f"activation {act!r} is outside the phase theory's assumptions" in extra[0]
        assert "\n" not in extra[0] and f"warning: {extra[0]}" in ph.explain()
    with pytest.raises(InputError, match="activation 'relux'"):
        classify(1000, 0.1, 0.5, activation="relux")
