"""Golden numbers for test_conformance.py, from the ORIGINAL AutoSNN network code.

For every case in test_conformance.CASES: build our network and batch with the test's own seeded
`build`, copy those weights by name into the original's network (nabk89/AutoSNN, commit 53b4818;
its retrain/childnet.py or train_supernet/supernet.py), run the test's `run_passes` on the original
(one Adam step between two training passes, then eval), and print GOLDEN as a Python literal to
paste into the test. Our own network is run too and its differences from the original go to stderr
(the measured gaps behind the test's tolerances); nothing is written to disk.

    pip install --no-deps --target ~/.cache/autosnn-peer-site spikingjelly==0.0.0.0.2
    PYTHONPATH=~/.cache/autosnn-peer-site python3 tools/golden_original.py --original ../shared/peer/original

Needs spikingjelly 0.0.0.0.2 (the original's neuron API), installed apart so that the project's
environment does not change. Options: --threads N (default 2), --case NAME (repeatable).
"""
import argparse
import re
import sys
import types
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))      # the project root

import test_conformance as tc  # noqa: E402

from layers import MaxPool  # noqa: E402
from search_space import CANDIDATES, get_backbone  # noqa: E402


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


def build_original(case: str, ours, childnet, supernet):
    """The original's network for `case`, holding the weights of our network `ours`, and its
    forward(x) -> out [B, K] (block ids for the super-network's path)."""
    spec = tc.CASES[case]
    event = spec.get("input_shape", (3, 32, 32))[0] == 2
    snn = {"T": tc.T, "init_tau": 2.0, "v_threshold": 1.0, "neuron": "PLIF", "is_DVS_data": event}
    bb = get_backbone(spec["backbone"])
    arch = iter(spec["arch"].split("-"))
    layout = [next(arch) if p.kind == "search" else "max_pool_k2" for p in bb.positions]
    if spec.get("supernet"):
        args = types.SimpleNamespace(dataset_name="CIFAR10", search_space=spec["backbone"])
        net = supernet.SpikingNetwork(spec["backbone"], 10, snn, args)
        ids = np.array([-1 if b == "max_pool_k2" else CANDIDATES.index(b) for b in layout])
        forward = lambda x: net(x, ids)[0]                                         # noqa: E731
    else:
        args = types.SimpleNamespace(dataset_name="CIFAR10", macro_type=spec["backbone"])
        net = childnet.SpikingNetwork(spec["backbone"], 10, snn, arch=layout, args=args)
        forward = lambda x: net(x)[0]                                               # noqa: E731
    sd = {original_name(k, bool(spec.get("supernet"))): v for k, v in ours.state_dict().items()}
    if set(sd) != set(net.state_dict()):
        fail(f"{case}: the name mapping does not fit the original: {sorted(set(sd) ^ set(net.state_dict()))[:6]}")
    net.load_state_dict(sd)
    return net, forward


def measure_original(case: str, childnet, supernet, functional) -> dict:
    """run_passes on the original, with our names for layers, parameters and BN layers."""
    ours, x, labels = tc.build(case)
    sup = bool(tc.CASES[case].get("supernet"))
    net, orig_forward = build_original(case, ours, childnet, supernet)
    modules = dict(net.named_modules())
    keep = ours.path_state_dict(tc.CASES[case]["arch"])
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

    return tc.run_passes(net, forward, params, bns, x, labels, reset=lambda: functional.reset_net(net))


def gaps(ours: dict, golden: dict) -> dict:
    """Largest relative difference per numeric field over all passes, and the exact fields' equality."""
    worst = {"loss": 0.0, "grad_norms": 0.0, "bn": 0.0}

    def rel(a, b):
        return abs(a - b) / max(abs(b), 1e-12)

    for p, want in golden.items():
        got = ours[p]
        worst.setdefault("spikes_equal", True)
        worst["spikes_equal"] &= got["spikes"] == want["spikes"] and got["class_counts"] == want["class_counts"]
        if "loss" in want:
            worst["loss"] = max(worst["loss"], rel(got["loss"], want["loss"]))
            for k, w in want["grad_norms"].items():
                worst["grad_norms"] = max(worst["grad_norms"], rel(got["grad_norms"][k], w))
            for k, w in want["bn"].items():
                worst["bn"] = max(worst["bn"], *(rel(a, b) for a, b in zip(got["bn"][k][:2], w[:2])))
    return worst


def literal(v, indent=0, width=118) -> str:
    """A compact Python literal: short containers on one line, long ones packed or one item per line."""
    def one(v):
        if isinstance(v, float):
            s = f"{v:.9g}"
            return s if any(c in s for c in ".en") else s + ".0"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k!r}: {one(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(one(x) for x in v) + "]"
        return repr(v)

    flat = one(v)
    if indent + len(flat) <= width or not isinstance(v, (dict, list)):
        return flat
    pad = " " * (indent + 4)
    items = ([f"{k!r}: {literal(x, indent + 4, width)}" for k, x in v.items()]
             if isinstance(v, dict) else [literal(x, indent + 4, width) for x in v])
    open_, close = "{}" if isinstance(v, dict) else "[]"
    lines, line = [], ""
    for it in items:
        packable = "\n" not in it and len(pad) + len(line) + len(it) + 2 <= width
        if line and packable:
            line += " " + it + ","
        else:
            if line:
                lines.append(pad + line)
            line = it + ","
    lines.append(pad + line)
    return open_ + "\n" + "\n".join(lines) + "\n" + " " * indent + close


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", required=True, type=Path,
                    help="folder of the original code (../shared/peer/original)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--case", action="append", choices=list(tc.CASES), help="only these cases (default: all)")
    a = ap.parse_args()
    if not (a.original / "retrain" / "childnet.py").is_file():
        fail(f"{a.original}: not the original AutoSNN code (no retrain/childnet.py)")
    torch.set_num_threads(a.threads)
    childnet, supernet, functional = load_original(a.original.resolve())
    golden = {}
    for case in a.case or tc.CASES:
        golden[case] = measure_original(case, childnet, supernet, functional)
        ours = tc.measure_ours(case)
        print(f"{case}: ours vs original {gaps(ours, golden[case])}; "
              f"test fields off: {tc.differences(ours, golden[case])}", file=sys.stderr)
    print(f"# torch {torch.__version__}, {a.threads} threads")
    print("GOLDEN = " + literal(golden))


if __name__ == "__main__":
    main()
