"""Make the NIR golden numbers of tests/test_nir.py with independent NIR readers (Norse, snnTorch,
spikingjelly).

The readers are never dependencies of the project: this script runs in a scratch environment that
reuses the system torch, and its output (numbers only) is stored in tests/data/nir/:

    python3 -m venv --system-site-packages /tmp/nirvenv
    /tmp/nirvenv/bin/pip install --no-deps nir==1.0.8 nirtorch==2.6 norse==1.1.0 snntorch==1.0.0 \\
        spikingjelly==2.0.0 loguru        # --no-deps: the system torch, not a second one
    /tmp/nirvenv/bin/python tools/golden_nir.py train    # tests/data/nir/model.pt, inputs.npz (PLIF, max-pools)
    /tmp/nirvenv/bin/python tools/golden_nir.py ties     # tests/data/nir/ties.pt (LIF leak 0.5, v_th 0.5)
    /tmp/nirvenv/bin/python tools/golden_nir.py golden   # tests/data/nir/golden.npz (the readers' spikes, scores)

`train`: an AutoSNN_4 child network (SRB with identity and with 1x1-conv shortcut, skip_connect,
SCB, three max-pools; PLIF; T = 4), 4 classes of the synthetic images (data.synthetic_images; the stored
model.pt was made when they were oriented gratings, before the horizontal bars of today),
trained for a few epochs on the CPU; 16 fixed test images (4 per class) stored as uint8 pixels.
`ties`: an SNN_4_4 child (avg-pool + neuron down-sampling) with LIF neurons of leak 1/tau0 = 0.5 and
v_th = 0.5, trained the same way: binary leaks and spike inputs put many membranes exactly on the
threshold (the case where firing at v > v_th and at v >= v_th differ).
`check RUN`: a run folder's model.pt (a dry run's, say) in every reader, against run_nir and the network.
`golden`: each network exported with export.nir.to_nir(net, reader=R) for every reader R of
export.nir.READERS (its dt and threshold), written to and read back from a .nir file, loaded by
evaluating READERS[R].load (the call docs/nir.md gives) and run one image and one time step at a time.
Stored per network and reader: every neuron node's output spikes [T, B, ...] (bit-packed) and the
class scores [B, K]; the provenance entry holds the versions and predictions.
"""
import argparse
import contextlib
import importlib
import importlib.metadata as md
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autosnn import SpikingNetwork, load_model, rate_loss, save_model  # noqa: E402
from data import NORMALISATION, synthetic_images  # noqa: E402
from export.nir import READERS, to_nir  # noqa: E402

OUT = ROOT / "tests" / "data" / "nir"
CLASSES, T = 4, 4
NETWORKS = {   # file: (backbone, architecture, neuron options)
    "model.pt": ("AutoSNN_4", "SRB_k3-SRB_k3-skip_connect-SCB_k3-SRB_k3", {}),
    "ties.pt": ("SNN_4_4", "SCB_k3-SRB_k3-skip_connect-SRB_k3-SCB_k3", {"neuron": "lif", "tau0": 2.0, "v_th": 0.5}),
}
# what each reader's loaded module is made of: the modules whose outputs are a neuron node's spikes,
# and the submodules READERS[r].load names
NEURON_MODULES = {"norse": ("LIFBoxCell", "IAFCell"), "snntorch": ("Leaky",), "spikingjelly": ("_NIRStatefulModule",)}
IMPORTS = {"norse": ("functools", "nir", "nirtorch", "norse.torch.utils.import_nir"),
           "snntorch": ("snntorch.import_nir",), "spikingjelly": ("spikingjelly.activation_based.nir_exchange",)}


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32, as data.py normalises the synthetic dataset."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in NORMALISATION["synthetic"])
    return (torch.from_numpy(images).float() / 255 - mean) / std


def four_classes(n, seed):
    x, y = synthetic_images(n, seed)
    keep = y < CLASSES
    return x[keep], y[keep]


def train(file: str, epochs=6, seed=0):
    backbone, arch, options = NETWORKS[file]
    torch.manual_seed(seed)
    x, y = four_classes(1000, seed=11)
    net = SpikingNetwork(backbone, CLASSES, arch=arch, T=T, **options)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 32):
            idx = perm[i:i + 32].numpy()
            out, _ = net(normalise(x[idx]))
            loss = rate_loss(out, torch.from_numpy(y[idx]), T)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: last loss {loss.item():.4f}")
    xt, yt = four_classes(40, seed=12)
    xt, yt = xt[:16], yt[:16]
    net.eval()
    with torch.no_grad():
        out, stats = net(normalise(xt))
    print(f"test acc {(out.argmax(1).numpy() == yt).mean():.3f}, firing rates",
          {k: round(v, 3) for k, v in stats.summary()["firing_rate"].items()})
    OUT.mkdir(parents=True, exist_ok=True)
    save_model(net, OUT / file)
    if file == "model.pt":
        np.savez_compressed(OUT / "inputs.npz", images=xt, labels=yt)


def load_reader(reader: str, graph):
    """The reader's module for `graph`, made by evaluating READERS[reader].load."""
    names = {"graph": graph}
    for module in IMPORTS[reader]:
        importlib.import_module(module)
        names[module.split(".")[0]] = sys.modules[module.split(".")[0]]
    with contextlib.redirect_stdout(io.StringIO()):      # snnTorch prints every threshold it rescales
        return eval(READERS[reader].load, names)


def run_reader(reader: str, graph, images: torch.Tensor):
    """One image at a time, T steps each (Norse and snnTorch take NIR's unbatched shapes,
    spikingjelly a batch of one). Returns (scores [B, K], {node name: spikes [T, B, ...] float32})."""
    names = {n.replace(".", "_"): n for n in graph.nodes}
    scores, spikes = [], {}
    for b in range(images.shape[0]):
        module = load_reader(reader, graph)     # a fresh module: no state carried between images
        rec = {}
        for n, m in module.named_modules():
            if type(m).__name__ in NEURON_MODULES[reader]:
                m.register_forward_hook(lambda m, i, o, n=n: rec.setdefault(n, []).append(
                    (o[0] if isinstance(o, tuple) else o).detach().clone().reshape(-1)))
        x = images[b:b + 1] if reader == "spikingjelly" else images[b]
        state, total = None, 0
        with torch.no_grad():
            for _ in range(T):
                if reader == "snntorch":            # its neurons keep their own state (init_hidden)
                    out = module(x)
                else:
                    out, state = module(x, state) if state is not None else module(x)
                out = out[0] if isinstance(out, tuple) else out
                total = total + out.reshape(-1)
        scores.append(total)
        for n, v in rec.items():
            spikes.setdefault(names[n.removeprefix("module.")], []).append(torch.stack(v))
    return torch.stack(scores), {k: torch.stack(v, 1) for k, v in spikes.items()}


def written_and_read(net, reader: str):
    """The network's NIR graph for `reader`, written to a .nir file's bytes and read back."""
    import nir
    buf = io.BytesIO()
    nir.write(buf, to_nir(net, reader=reader))
    buf.seek(0)
    return nir.read(buf)


def golden():
    data = np.load(OUT / "inputs.npz")
    x = normalise(data["images"])
    arrays, provenance = {}, {"versions": {p: md.version(p) for p in
                                           ("nir", "nirtorch", "norse", "snntorch", "spikingjelly", "torch")}}
    for file in NETWORKS:
        net = load_model(OUT / file)
        for reader in READERS:
            graph = written_and_read(net, reader)
            scores, spikes = run_reader(reader, graph, x)
            key = f"{file}/{reader}"
            arrays[f"{key}/scores"] = scores.numpy().astype(np.float32)
            for name, s in spikes.items():
                shape = (s.shape[0], s.shape[1], *graph.nodes[name].output_type["output"])
                assert set(np.unique(s.numpy())) <= {0.0, 1.0}, (key, name)
                arrays[f"{key}/spikes/{name}"] = np.packbits(s.numpy().astype(bool).ravel())
                arrays[f"{key}/shape/{name}"] = np.array(shape)
            provenance[key] = {"dt": float(graph.metadata["dt"]), "predictions": scores.argmax(1).tolist(),
                               "spikes_per_layer": {k: int(v.sum()) for k, v in spikes.items()}}
            print(key, provenance[key]["predictions"], sum(provenance[key]["spikes_per_layer"].values()), "spikes")
    arrays["provenance"] = np.array(json.dumps(provenance))
    np.savez_compressed(OUT / "golden.npz", **arrays)
    print(f"wrote {OUT / 'golden.npz'} ({(OUT / 'golden.npz').stat().st_size} bytes)")


def check(run_dir: str, images: int):
    """A run folder's model.pt (e.g. a dry run's) in every reader, on the first `images` images of the
    run's test split: per reader, the neuron outputs that differ from run_nir's on the same file (the
    graph's own equations) and the predictions that differ from the network's. Prints, stores nothing."""
    from data import load_dataset
    from export.nir_runner import run_nir
    from plumbing.rundir import read_config
    global T
    flat, _ = read_config(Path(run_dir))
    ds = load_dataset(flat["dataset"], flat["data_root"], False, flat["T"], flat["split_by"], flat["n_train"] or None,
                      flat["n_test"] or None)
    x = next(iter(ds.split("test").batches(images)))[0]
    net = load_model(Path(run_dir) / "model.pt")
    T = net.T
    with torch.no_grad():
        ours = net(x)[0].argmax(1)
    print(f"{run_dir}/model.pt: {net.arch} on {net.backbone.name}, T = {net.T}, {len(x)} test images")
    for reader in READERS:
        graph = written_and_read(net, reader)
        scores, spikes = run_reader(reader, graph, x)
        _, ref = run_nir(graph, x, net.T)
        diff = sum(int((ref[k].bool() != spikes[k].bool().reshape(ref[k].shape)).sum()) for k in ref)
        total = sum(v.numel() for v in ref.values())
        print(f"{reader}: {diff} of {total} neuron outputs differ from run_nir's; "
              f"{int((scores.argmax(1) != ours).sum())} of {len(x)} predictions differ from the network's")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["train", "ties", "golden", "check"])
    p.add_argument("run", nargs="?", help="check: a run folder with a model.pt")
    p.add_argument("--images", type=int, default=50, help="check: test images (default 50)")
    a = p.parse_args()
    if a.what == "check":
        check(a.run, a.images)
    else:
        {"train": lambda: train("model.pt"), "ties": lambda: train("ties.pt"), "golden": golden}[a.what]()
