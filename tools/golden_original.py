"""Golden numbers for tests/test_conformance.py, from the ORIGINAL AutoSNN network code.

For every case in CASES: build our network and batches with benchmarks.conformance.build (seeded),
copy those weights by name into the original's network (nabk89/AutoSNN, commit 53b4818; its
retrain/childnet.py or train_supernet/supernet.py), run benchmarks.conformance.run_passes on the
original (two training passes with one Adam step between them, BN calibration where the case asks
for it, an eval pass), and write the cases and the original's numbers to tests/data/conformance.json.
Our own network is measured too; how far it is from the original goes to stderr. From the project root:

    pip install --no-deps --target ~/.cache/autosnn-peer-site spikingjelly==0.0.0.0.2
    PYTHONPATH=~/.cache/autosnn-peer-site python3 tools/golden_original.py --original PATH   # PATH: a checkout of github nabk89/AutoSNN

Needs spikingjelly 0.0.0.0.2 (the original's neuron API), installed apart so that the project's
environment does not change. Options: --threads N (default 2; the test runs at the count recorded),
--case NAME (repeatable: measure only these, keep the others' numbers), --check (compare only, write
nothing). To add a case, add it to CASES and run with --case NAME.
"""
import argparse
import json
import re
import sys
import types
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))      # the project root

from benchmarks.conformance import (DATA, build, differences, machine, measure_ours,  # noqa: E402
                                    run_passes, threads)
from files import atomic_write_text  # noqa: E402
from layers import MaxPool  # noqa: E402
from search_space import CANDIDATES, get_backbone  # noqa: E402

ORIGINAL = "nabk89/AutoSNN, commit 53b4818"
SPIKINGJELLY = "0.0.0.0.2"


def case(backbone, arch, supernet=False, input_shape=(3, 32, 32), v_th=1.0, seed=17, gain=6.0, calibrate=0):
    """A case as stored in the data file (see benchmarks.conformance)."""
    return {"backbone": backbone, "arch": arch, "supernet": supernet, "input_shape": list(input_shape),
            "v_th": v_th, "seed": seed, "gain": gain, "calibrate": calibrate}


CASES = {
    # an AutoSNN_16 child: SRBs with identity and 1x1-conv shortcuts, an identity skip_connect
    "child_autosnn16": case("AutoSNN_16", "SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5"),
    # a path of our super-network (every candidate built, arch=... at forward), 1x1-conv skip_connect
    "supernet_path": case("AutoSNN_16", "SCB_k3-skip_connect-skip_connect-SCB_k5-SRB_k3", supernet=True),
    # SNN_3: searched stride-2 positions (factorized-reduce skips, SRB 1x1 shortcuts)
    "child_snn3": case("SNN_3", "SRB_k3-skip_connect-SCB_k3-SRB_k5-SRB_k3-skip_connect-SCB_k5-skip_connect"),
    # the 2x128x128 DVS stem (per-step stem conv and BN)
    "child_dvs128": case("AutoSNN_16", "SCB_k3-SRB_k3-skip_connect-SRB_k5-SCB_k5", input_shape=(2, 128, 128)),
    # Three cases whose spikes or losses after the Adam step parted from the original's while the
    # gradients differed in their last bits (sums over T in another order): a super-network path at
    # torch's default weight scale (gain 1) evaluated from calibrated BN statistics, a child at
    # V_th 0.5, an SNN_2 child (spiking GAP) at V_th 0.5
    "supernet_calibrated": case("AutoSNN_16", "SRB_k3-SCB_k5-SRB_k5-skip_connect-SCB_k3", supernet=True,
                                gain=1.0, calibrate=1),
    "child_vth05": case("AutoSNN_16", "SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5", v_th=0.5, seed=3, gain=2.0),
    "child_snn2_vth05": case("SNN_2", "SRB_k3-SRB_k3-SRB_k3-SRB_k3-SRB_k3", v_th=0.5, seed=2, gain=3.0),
}


# Our module names -> the original's, inside a block (by block family) and outside blocks.
BLOCK_NAMES = {
    "S": [("cb1.conv.", "conv1."), ("cb1.bn.", "bn1."), ("n1.", "spike_neuron_1."), ("cb2.conv.", "conv2."),
          ("cb2.bn.", "bn2."), ("n2.", "spike_neuron_2."), ("shortcut.conv.", "downsample.0."),
          ("shortcut.bn.", "downsample.1.")],
    "skip": [("conv.conv_a.", "conv_1."), ("conv.conv_b.", "conv_2."), ("conv.", "conv."), ("bn.", "bn."),
             ("n1.", "spike_neuron.")],
}
OUTER_NAMES = [("stem.conv.", "conv_stem.0."), ("stem.bn.", "conv_stem.1."), ("stem.n1.", "spike_neuron_stem."),
               ("stem.cb2.conv.", "DVS_conv_1.0."), ("stem.cb2.bn.", "DVS_conv_1.1."), ("stem.n2.", "DVS_conv_1.2."),
               ("stem.pool1.", "DVS_max_pool_1."), ("stem.pool2.", "DVS_max_pool_2."),
               ("gap.n1.", "avgpool.1."), ("fc.", "fc.1."), ("fc_neuron.", "fc.2."), ("layers.", "layers.")]


def original_name(ours: str, supernet: bool) -> str:
    """Our state_dict key (or module name) -> the original's: 'layers.2.SRB_k5.cb1.conv.weight' ->
    'layers.2.conv1.weight' (child) or 'layers.2.blocks.4.conv1.weight' (super-network)."""
    m = re.fullmatch(r"layers\.(\d+)\.((?:skip_connect|S[CR]B_k\d+))\.(.*)", ours)
    if m:
        i, block, rest = m.groups()
        table = BLOCK_NAMES["skip" if block == "skip_connect" else "S"]
        new = next(b + rest[len(a):] for a, b in table if rest.startswith(a))
        where = f"layers.{i}.blocks.{CANDIDATES.index(block)}." if supernet else f"layers.{i}."
        return where + new
    ours_dot = ours + "."
    a, b = next((a, b) for a, b in OUTER_NAMES if ours_dot.startswith(a))
    return (b + ours_dot[len(a):])[:-1]


def fail(message: str):
    """One line for people, exit status 2 (the project's convention)."""
    print(f"golden_original: {message}", file=sys.stderr)
    sys.exit(2)


def load_original(root: Path):
    """The original's childnet and supernet modules and spikingjelly's functional (reset_net)."""
    sys.path.insert(0, str(root))
    try:
        import spikingjelly.clock_driven.neuron  # noqa: F401  (the original's neuron API)
    except ImportError:
        fail("spikingjelly 0.0.0.0.2 is not importable: pip install --no-deps --target "
             "~/.cache/autosnn-peer-site spikingjelly==0.0.0.0.2, then PYTHONPATH=~/.cache/autosnn-peer-site")
    from retrain import childnet
    from spikingjelly.clock_driven import functional
    from train_supernet import supernet
    return childnet, supernet, functional


def build_original(name: str, spec: dict, ours, childnet, supernet):
    """The original's network for a case, holding the weights of our network `ours`, and its
    forward(x) -> out [B, K] (block ids for the super-network's path)."""
    snn = {"T": ours.T, "init_tau": 2.0, "v_threshold": spec["v_th"], "neuron": "PLIF",
           "is_DVS_data": spec["input_shape"][0] == 2}
    bb = get_backbone(spec["backbone"])
    arch = iter(spec["arch"].split("-"))
    layout = [next(arch) if p.kind == "search" else "max_pool_k2" for p in bb.positions]
    if spec["supernet"]:
        args = types.SimpleNamespace(dataset_name="CIFAR10", search_space=spec["backbone"])
        net = supernet.SpikingNetwork(spec["backbone"], 10, snn, args)
        ids = np.array([-1 if b == "max_pool_k2" else CANDIDATES.index(b) for b in layout])
        forward = lambda x: net(x, ids)[0]                                         # noqa: E731
    else:
        args = types.SimpleNamespace(dataset_name="CIFAR10", macro_type=spec["backbone"])
        net = childnet.SpikingNetwork(spec["backbone"], 10, snn, arch=layout, args=args)
        forward = lambda x: net(x)[0]                                               # noqa: E731
    sd = {original_name(k, spec["supernet"]): v for k, v in ours.state_dict().items()}
    if set(sd) != set(net.state_dict()):
        fail(f"{name}: the name mapping does not fit the original: {sorted(set(sd) ^ set(net.state_dict()))[:6]}")
    net.load_state_dict(sd)
    return net, forward


def measure_original(name: str, spec: dict, childnet, supernet, functional) -> dict:
    """run_passes on the original, with our names for layers, parameters and BN layers."""
    ours, x, labels, calibration = build(spec)
    sup = spec["supernet"]
    net, orig_forward = build_original(name, spec, ours, childnet, supernet)
    modules = dict(net.named_modules())
    keep = ours.path_state_dict(spec["arch"])
    params = {k: net.get_parameter(original_name(k, sup)) for k, _ in ours.named_parameters() if k in keep}
    bns = {k[:-len(".running_mean")]: modules[original_name(k, sup)[:-len(".running_mean")]]
           for k in keep if k.endswith(".running_mean")}
    # Spike counting: hooks on the original's neurons (our name = PLIF parameter's module) and max-pools.
    counted = {k[:-2]: original_name(k, sup)[:-2] for k in keep if k.endswith(".w")}
    counted.update({n: original_name(n, sup) for n, m in ours.named_modules() if isinstance(m, MaxPool)})
    spikes = {}

    def hook(name, module, inputs, output):
        s = output[0] if isinstance(output, tuple) else output         # SpikingMaxPool2d: (out, count)
        spikes[name] = spikes.get(name, 0) + int(s.detach().sum().item())

    for ours_name, orig_name in counted.items():
        modules[orig_name].register_forward_hook(lambda m, i, o, n=ours_name: hook(n, m, i, o))

    def forward(x):
        spikes.clear()
        out = orig_forward(x)
        return out, dict(spikes)

    return run_passes(net, forward, params, bns, x, labels, calibration, reset=lambda: functional.reset_net(net))


def gaps(ours: dict, golden: dict) -> dict:
    """The largest relative difference of the loss, the gradient norms and the BN sums over all
    passes, and how many gradients and BN layers are not bit-identical."""
    worst = {"loss": 0.0, "grads": 0.0, "bn": 0.0, "grads_not_bitwise": 0, "bn_not_bitwise": 0}

    def rel(a, b):
        return abs(a - b) / max(abs(b), 1e-12)

    for p, want in golden.items():
        got = ours[p]
        worst["loss"] = max(worst["loss"], rel(got["loss"], want["loss"]))
        for field, values in (("grads", 1), ("bn", 2)):
            for k, w in want.get(field, {}).items():
                worst[field] = max(worst[field], *(rel(a, b) for a, b in zip(got[field][k][:values], w)))
                worst[f"{field}_not_bitwise"] += got[field][k][-1] != w[-1]
    return worst


def to_json(doc) -> str:
    """JSON, one key per line, lists of numbers or strings on one line."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[[^\[\]{}]*\]", lambda m: " ".join(m.group(0).split()), text) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", required=True, type=Path,
                    help="a checkout of the original AutoSNN code (github nabk89/AutoSNN)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--case", action="append", choices=list(CASES), help="only these cases (default: all)")
    ap.add_argument("--check", action="store_true", help="compare ours with the original; write nothing")
    a = ap.parse_args()
    if not (a.original / "retrain" / "childnet.py").is_file():
        fail(f"{a.original}: not the original AutoSNN code (no retrain/childnet.py)")
    doc = json.loads(DATA.read_text()) if DATA.is_file() else {"cases": {}}
    made_with = {**machine(), "threads": a.threads, "spikingjelly": SPIKINGJELLY, "original": ORIGINAL}
    if a.case and not a.check and doc["cases"] and doc.get("made_with") != made_with:
        fail(f"{DATA.name} was made with {doc.get('made_with')}, not {made_with}: remake every case (no --case)")
    childnet, supernet, functional = load_original(a.original.resolve())
    cases = dict(doc["cases"]) if a.case else {}
    with threads(a.threads):
        for name in a.case or CASES:
            golden = measure_original(name, CASES[name], childnet, supernet, functional)
            ours = measure_ours(CASES[name])
            print(f"{name}: ours vs original {gaps(ours, golden)}; off beyond the tolerances: "
                  f"{differences(ours, golden)}; not bit-identical: {len(differences(ours, golden, exact=True))} "
                  f"fields", file=sys.stderr)
            cases[name] = {"case": CASES[name], "golden": golden}
    if a.check:
        return
    doc = {"about": f"Golden numbers from the original AutoSNN code ({ORIGINAL}), written by "
                    "tools/golden_original.py; what they measure: benchmarks/conformance.py",
           "made_with": made_with, "cases": {n: cases[n] for n in CASES if n in cases}}
    atomic_write_text(DATA, to_json(doc))
    print(f"wrote {DATA}", file=sys.stderr)


if __name__ == "__main__":
    main()
