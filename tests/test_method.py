"""Tests aimed at single mechanisms of the method, each written so that the plausible bug it names
makes it fail (each was applied to the code and seen to fail its test).

    bug                                              test
    reset not detached (v * (1 - s), s with grad)    test_bptt_if_by_hand, test_bptt_plif_against_equations
    boost takes the max over a class's 10 neurons    test_population_rate_three_of_ten, test_readout_*
    parents are the k least fit                      test_crossover_children_*, test_mutation_children_*
    results.json reports the best epoch              test_retrain_reports_last_epoch
    classifier spikes not counted                    test_classifier_spikes_counted
    SRB shortcut added after the second neuron       test_srb_shortcut_joins_current
    prefix-shared evaluation differs from one-by-one test_evaluate_pool_equals_plain_forward
    BN recalibration not a cumulative average        test_recalibrate_bn_is_cumulative_average
    PLIF differs from spikingjelly's                 test_plif_golden_spikingjelly
    --eval-every 0 accepted (crashes after the       test_reliability.py::test_bad_input_one_line_no_folder
      folder exists)                                   [--eval-every 0]
    divergence check ignores BN running statistics   test_reliability.py::test_diverged_weights_stop_training
                                                       [bn running_var inf], [bn running_mean 1e7]
    divergence check ignores finite exploded weights test_reliability.py::test_huge_learning_rate_stops_*
    a saturated classifier with a flat loss goes on  test_reliability.py::test_classifier_firing_always_*
    membrane charged as lerp(v, x, k) (the same      test_neurons.py::test_membrane_update_rounds_as_v_plus_
      value, another rounding: flips spikes)           x_minus_v_times_k (the conformance test missed it)
    compiled neuron loop ignores alpha               test_fast.py::test_compiled_training_loop_uses_alpha
    compiled loop falls back to eager past dynamo's  test_fast.py::test_compiled_no_grad_loop_is_eager_bit_
      recompile limit                                  for_bit_and_never_falls_back
    SpikeStats.energy() sums the batch               test_spikes.py::test_energy_is_per_image
    summary()["firing_rate"] not divided by T        test_spikes.py::test_spike_stats_equal_manual_recount
    the population rate on a classifier that never   test_autosnn.py::test_output_is_population_rate_summed_
      fires (a test that could not fail)               over_T (its classifier now fires)
    Pareto front keeps a less accurate record with   test_pareto.py::test_pareto_front_drops_less_accurate_
      equal spikes                                     with_equal_spikes, test_nondominated_sort_with_ties_*
    chance warning counts the whole history          test_evolve.py::test_chance_warning_counts_the_generation_*
    children of any generation-1 architecture        test_evolve.py::test_evolution_children_are_flips_of_the_*
    evaluate_pool / evaluate_model forget net.eval() test_evolve.py::test_evaluation_runs_in_eval_mode_and_*
    BN recalibration syncs with the host             test_evolve.py::test_recalibrate_bn_reads_nothing_back_*
    NSGA-II: survivors, tournament, crowding, sops   test_pareto.py::test_survivors_*, test_tournament_*,
                                                       test_crowding_distance_by_hand, test_pareto_survivors_*
    a --pick rule ignored or wrong                   test_pareto.py::test_pick_rules_on_a_hand_made_front,
                                                       test_chosen_follows_pick_and_lambda_default_is_the_fittest
    atomic_write skips the fsync                     test_files.py::test_atomic_write_fsyncs_the_whole_file_*
    ENOSPC seen only on the outer error              test_files.py (disk_full through a chained error)
    SIGTERM not ignored during shutdown; a second    test_dist.py::test_repeated_runs_and_rank_kills_never_abort
      traceback after a rank kill                      (slow)
    AEDAT 2.0 events with bit 31 kept                test_events.py::test_aedat20_special_events_are_dropped
    search_split rounds instead of flooring (10)     test_data.py::test_search_split_floors_the_training_part
    SVHN mean/std in the wrong channel order (11)    test_data.py::test_normalisation_constants_are_the_papers_*
    a float CIFAR label truncated                    test_formats.py::test_svhn_float_label_is_refused_*,
                                                       test_cifar_labels_that_are_not_integers_name_the_file
    channels_last convolutions (training no longer   test_conformance.py::test_matches_the_original
      matches the original's numbers)
    a sum over T in another order than the           test_conformance.py::test_bit_identical_to_the_original
      original's: conv/classifier weights over T*B     (all seven cases fail for folded convs, folded
      images at once, sigmoid(w) once for all steps,   classifier or one sigmoid; six for the stem; five for
      the stem current expanded, rates.sum(0): last    rates.sum(0)), test_matches_the_original (spikes after
      bits of gradients, then other spikes after an    the step: the last three cases before the fix),
      Adam step                                        test_autosnn.py::test_float32_equals_stepwise_bit_for_
                                                       bit_after_adam (folded convs/classifier, one sigmoid)
    NIR export: BN bias not folded, shortcut edge    test_nir.py (golden numbers from Norse, snnTorch and
      dropped, max-pool threshold, tau not over dt     spikingjelly on a PLIF network and on one with exact
    NIR threshold written as v_th (readers fire at     ties), test_nir.py::test_threshold_is_the_float32_*,
      v > v_th) or as 1.0 whatever v_th                  test_graph_computes_the_network[*-snn4-ties]
    NIR max-pool neuron with tau = dt or threshold   test_nir.py::test_max_pool_neuron_is_a_memoryless_*,
      0.5 (spikingjelly refuses / S = 1 missed)        test_reader_files_use_the_readers_time_step_*
    BN recalibration replaced by `pass` in          test_bn_recalibration_changes_the_evaluation
      evaluate_archs
    random search from generation 2 on uses          test_random_search_draws_fresh_architectures_every_*
      evolution's operators
    the no-grad loop written v += x*k - v*k          test_no_grad_loop_rounds_the_membrane_as_the_equation_*
    non-dominated sort without dominates(j, i)       test_nondominated_sort_when_a_later_point_dominates
    the memory estimate off by 4x (activations,      test_options.py::test_memory_estimate_is_within_2x_*,
      parameters or synthetic data)                    test_synthetic_data_estimate_is_within_2x_of_its_peak
    bench's ratio inverted (original / ours)         test_options.py::test_speedup_is_ours_over_the_reference
    --seed 2**64-1 accepted (seed + 1 overflows)     test_options.py::test_bad_input_one_line_no_folder
    bench's CUDA peak reported on a CPU (the test    test_pipeline.py::test_bench_quick_json
      was true either way)
    silent_layers not the layers without a spike     test_reliability.py::test_run_folder_contents
      (the test was true either way)
    a file of another run resumed; a model.pt of     test_run_files.py (a test fails when any check of
      another architecture loaded; a damaged row or    plumbing/identity.py, autosnn.check_run_model,
      record read back; a pick that matches nothing    plumbing/schema.py or the frame cache is removed)

Only public behaviour is used: Neuron(x) and Neuron.step, blocks called as block(x),
SpikingNetwork's forward and SpikeStats, evolve's Search, and train.main.
"""
import json
import math
import random

import pytest
import torch
import torch.nn as nn
from conftest import no_plots

import evaluation
import train
from autosnn import SpikingNetwork
from evolve import SearchConfig
from layers import SRB
from neurons import Neuron
from pareto import make_search
from search_space import AUTOSNN, Arch, get_backbone, parse_arch, sample_arch


# ---------------------------------------------------------------------------------------------
# BPTT through fire and reset
# ---------------------------------------------------------------------------------------------

def surrogate_primitive(d, alpha):
    """atan(pi/2 alpha d) / pi + 1/2: its derivative is the ATan surrogate alpha/2 / (1 + (pi/2 alpha d)^2)."""
    return torch.atan(math.pi / 2 * alpha * d) / math.pi + 0.5


def reference_neuron(x, k, v_th=1.0, alpha=2.0, detach_reset=True):
    """The paper's equations in plain autograd, written independently of autosnn.py.
    x: [T, ...] (float64); k: leak (tensor) or None for IF. Returns (spikes, membrane after reset), [T, ...].
    Forward of a spike is the step H(v - v_th) (H(0) = 1); its backward is the surrogate."""
    v, spikes, membranes = torch.zeros_like(x[0]), [], []
    for x_t in x:
        v = v + x_t if k is None else v + (x_t - v) * k
        d = v - v_th
        p = surrogate_primitive(d, alpha)
        s = (d >= 0).to(x.dtype) + p - p.detach()
        v = v * (1 - (s.detach() if detach_reset else s))
        spikes.append(s)
        membranes.append(v)
    return torch.stack(spikes), torch.stack(membranes)


def run_steps(neuron, x):
    """The neuron one step at a time through Neuron.step. x: [T, ...] -> (spikes, membranes) [T, ...]."""
    v, spikes, membranes = torch.zeros_like(x[0]), [], []
    for x_t in x:
        s, v = neuron.step(x_t, v)
        spikes.append(s)
        membranes.append(v)
    return torch.stack(spikes), torch.stack(membranes)


def grads(fn, x, weights, *params):
    """Gradients of sum(weights * fn(x)) with respect to x and params."""
    x = x.detach().clone().requires_grad_(True)
    loss = (fn(x) * weights).sum()
    return torch.autograd.grad(loss, [x, *params])


@pytest.mark.parametrize("form", ["forward", "step"])
def test_bptt_if_by_hand(form):
    # IF, v_th = 1, x = [1.2, 0.5, 0.9]: v = 1.2 (fire, reset to 0), 0.5, 1.4 (fire); L = s0 + s1 + s2.
    # Surrogate (alpha = 2): g(d) = 1 / (1 + (pi d)^2) at d = v - 1.
    # With the reset detached, v'0 = v0 * (1 - s0) = 0 passes no gradient back (1 - s0 = 0), so
    #   dL/dx0 = g(0.2);   dL/dx1 = g(-0.5) + (1 - s1) * g(0.4);   dL/dx2 = g(0.4).
    # A reset that keeps the gradient of s adds -v0 * g(0.2) * dL/dv'0 to dL/dx0 (and more).
    def g(d):
        return 1 / (1 + (math.pi * d) ** 2)
    n = Neuron("if", v_th=1.0)
    fn = (lambda x: n(x)) if form == "forward" else (lambda x: run_steps(n, x)[0])
    x = torch.tensor([1.2, 0.5, 0.9]).view(3, 1)
    assert fn(x).view(-1).tolist() == [1.0, 0.0, 1.0]
    (gx,) = grads(fn, x, torch.ones(3, 1))
    assert gx.view(-1).tolist() == pytest.approx([g(0.2), g(-0.5) + g(0.4), g(0.4)], rel=1e-6)
    # the same numbers from the equations, and a non-detached reset gives others
    ref = grads(lambda z: reference_neuron(z, None)[0], x.double(), torch.ones(3, 1))[0]
    bad = grads(lambda z: reference_neuron(z, None, detach_reset=False)[0], x.double(), torch.ones(3, 1))[0]
    assert torch.allclose(gx.double(), ref, rtol=1e-6)
    assert (bad - ref).abs().max() > 0.1


@pytest.mark.parametrize("form", ["forward", "step"])
def test_bptt_plif_against_equations(form):
    """PLIF with w = 0.3 (k = sigmoid(0.3)) on two neurons that fire and reset: dL/dx and dL/dw
    equal float64 autograd through the equations with a detached reset."""
    x = torch.tensor([[1.6, 0.7], [1.4, 2.6], [0.2, 0.9], [1.8, -0.4], [1.1, 1.5], [0.6, 2.2]])
    coef = torch.tensor([[1.0, -0.5], [0.75, 1.0], [-1.0, 0.5], [0.5, 1.25], [1.0, -0.75], [0.25, 1.0]])
    n = Neuron("plif", v_th=1.0)
    with torch.no_grad():
        n.w.fill_(0.3)
    fn = (lambda z: n(z)) if form == "forward" else (lambda z: run_steps(n, z)[0])
    s = fn(x)
    gx, gw = grads(fn, x, coef, n.w)

    w64 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    ref_s, ref_v = reference_neuron(x.double(), torch.sigmoid(w64))
    assert s.double().equal(ref_s.detach())
    assert 3 <= s.sum() <= 8 and (ref_v[s.bool()] == 0).all()        # fires and resets, not always
    rx, rw = grads(lambda z: reference_neuron(z, torch.sigmoid(w64))[0], x.double(), coef, w64)
    assert torch.allclose(gx.double(), rx, rtol=1e-5, atol=1e-6)
    assert gw.item() == pytest.approx(rw.item(), rel=1e-5)
    bx, bw = grads(lambda z: reference_neuron(z, torch.sigmoid(w64), detach_reset=False)[0],
                   x.double(), coef, w64)
    assert (bx - rx).abs().max() > 0.05 and abs(bw.item() - rw.item()) > 0.05   # the test can tell


# Golden PLIF numbers generated once with spikingjelly 2.0.0 (torch 2.13.0 CPU), in a scratch venv:
#   n = spikingjelly.activation_based.neuron.ParametricLIFNode(init_tau=tau0, decay_input=True,
#         v_threshold=1.0, v_reset=0.0, surrogate_function=surrogate.ATan(), detach_reset=True,
#         step_mode='m', store_v_seq=True)
#   s = n(X); (s * COEF).sum().backward()   -> s, n.v_seq (membrane after reset), n.w.grad, X.grad
# Its PLIF is v += (x - (v - v_reset)) * sigmoid(w), w0 = -ln(tau0 - 1), with decay_input=True; that
# is the paper's form with v_reset = 0. (decay_input=False would be v += x - v * sigmoid(w),
# a different neuron.) spikingjelly's default surrogate is Sigmoid and its default detach_reset is
# False, so both are named above. Numbers printed with 7 decimals; spikingjelly is not a dependency.
SJ_X = [[1.5, 0.8, 3.0], [0.9, 1.3, -0.5], [1.2, 0.4, 2.5],
        [0.3, 1.9, 0.7], [2.2, 0.6, 1.1], [0.7, 1.0, 2.0]]
SJ_COEF = [[1.0, -0.5, 0.25], [0.5, 1.0, -1.0], [-0.75, 0.5, 1.0],
           [1.0, 0.25, -0.5], [0.5, -1.0, 0.75], [1.0, 1.0, 1.0]]
SJ_GOLDEN = {
    2.0: {"spikes": [[0, 0, 1], [0, 0, 0], [1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]],
          "v": [[0.75, 0.4, 0.0], [0.825, 0.85, -0.25], [0.0, 0.625, 0.0],
                [0.15, 0.0, 0.35], [0.0, 0.3, 0.725], [0.35, 0.65, 0.0]],
          "dw": 1.71418035030365,
          "dx": [[0.3116248, 0.1851371, 0.0360501], [0.0047631, 0.4800905, 0.1861495],
                 [-0.3744226, 0.1418946, 0.4331958], [0.1574819, 0.0744013, 0.1134282],
                 [0.1919745, 0.0274984, 0.3235699], [0.0967135, 0.226344, 0.2176821]]},
    3.0: {"spikes": [[0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1]],
          "v": [[0.5, 0.2666667, 0.0], [0.6333333, 0.6111112, -0.1666667],
                [0.8222222, 0.5407408, 0.7222223], [0.6481482, 0.9938272, 0.7148148],
                [0.0, 0.8625515, 0.8432099], [0.2333333, 0.9083676, 0.0]],
          "dw": 1.3222503662109375,
          "dx": [[0.1295632, 0.0964884, 0.0833333], [0.0501446, 0.184367, 0.1649906],
                 [-0.0322216, 0.0759588, 0.2821272], [0.2375064, 0.0328137, 0.1393488],
                 [0.1312223, -0.0757324, 0.347704], [0.0490114, 0.307824, 0.2197757]]},
}


@pytest.mark.parametrize("tau0", [2.0, 3.0])
@pytest.mark.parametrize("form", ["forward", "step"])
def test_plif_golden_spikingjelly(tau0, form):
    gold = SJ_GOLDEN[tau0]
    x, coef = torch.tensor(SJ_X), torch.tensor(SJ_COEF)
    n = Neuron("plif", tau0=tau0, v_th=1.0, alpha=2.0)
    fn = (lambda z: n(z)) if form == "forward" else (lambda z: run_steps(n, z)[0])
    assert fn(x).tolist() == gold["spikes"]
    with torch.no_grad():
        assert torch.allclose(run_steps(n, x)[1], torch.tensor(gold["v"]), atol=1e-6)
    gx, gw = grads(fn, x, coef, n.w)
    assert torch.allclose(gx, torch.tensor(gold["dx"]), atol=1e-6)
    assert gw.item() == pytest.approx(gold["dw"], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Population readout ("boost") and the classifier's spikes
# ---------------------------------------------------------------------------------------------

def tiny_net(**kw):
    torch.manual_seed(0)
    return SpikingNetwork("AutoSNN_4", arch=AUTOSNN, **{"num_classes": 3, "T": 3, **kw})


def name_of(net, module):
    return next(n for n, m in net.named_modules() if m is module)


def test_population_rate_three_of_ten():
    """Classifier currents forced by a hook: in class 0, 3 of its 10 neurons get +5 (PLIF fires every
    step: v = 2.5 >= 1, reset to 0), the others -5; class 1: 7 of 10; class 2: none.
    out = T * (0.3, 0.7, 0.0); the max over a group would give T * (1, 1, 0)."""
    net = tiny_net().eval()
    on = torch.zeros(3, 10, dtype=torch.bool)
    on[0, [1, 4, 8]] = True
    on[1, :7] = True
    current = torch.where(on.flatten(), 5.0, -5.0)
    handle = net.fc.register_forward_hook(lambda m, inp, out: current.expand_as(out))
    try:
        out, _ = net(torch.randn(2, 3, 32, 32))
    finally:
        handle.remove()
    assert out.shape == (2, 3)
    assert torch.allclose(out, torch.tensor([0.9, 2.1, 0.0]).expand(2, 3), atol=1e-6)


def firing_net():
    """A child network whose classifier neurons fire, but not all of them (low v_th, big input)."""
    net = tiny_net(v_th=0.2).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 3
    return net, x


def forward_capturing(net, module, x):
    """net(x) with the output of `module` captured. -> (out, stats, captured output)."""
    seen = []
    handle = module.register_forward_hook(lambda m, inp, out: seen.append(out.detach().clone()))
    try:
        out, stats = net(x)
    finally:
        handle.remove()
    s = torch.cat(seen, 0)                      # (one call over all T steps, or one per step)
    assert s.shape[0] == net.T
    return out, stats, s


def test_readout_is_group_mean_summed_over_T_when_classifier_fires():
    net, x = firing_net()
    out, _, s = forward_capturing(net, net.fc_neuron, x)             # s: [T, B, K * 10]
    groups = s.reshape(net.T, x.shape[0], net.num_classes, 10)
    rate = groups.mean(3)
    assert ((0 < rate) & (rate < 1)).sum() >= 4                      # max and mean differ here
    assert torch.allclose(out, rate.sum(0), atol=1e-6)
    assert not torch.allclose(out, groups.amax(3).sum(0))


def test_classifier_spikes_counted():
    net, x = firing_net()
    _, stats, s = forward_capturing(net, net.fc_neuron, x)
    name = name_of(net, net.fc_neuron)
    per_layer = stats.per_layer()
    assert name in per_layer
    manual = s.sum().item() / x.shape[0]
    assert manual > 0
    assert per_layer[name].item() == pytest.approx(manual)
    assert stats.summary()["per_layer"][name] == pytest.approx(manual)
    assert stats.spikes.item() == pytest.approx(sum(v.item() for v in per_layer.values()))


# ---------------------------------------------------------------------------------------------
# The SRB join
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
def test_srb_shortcut_joins_current(stride):
    """1 channel, 1x1 kernels, IF neurons with v_th = 1.2, BN as identity (eval, mean 0, var 1,
    eps 0). Conv weights 0.7 then 0.4; the shortcut is the identity (stride 1) or a 1x1 conv of
    weight 1 + BN (stride 2, on a 1x1 image). Input spikes x = [1, 0, 1, 1]:
      first neuron:  v = 0.7, 0.7, 1.4 (fire, reset), 0.7      -> s1 = [0, 0, 1, 0]
      second conv:   0.4 * s1 = [0, 0, 0.4, 0]
      joined current before the second neuron: + x = [1, 0, 1.4, 1]
      second neuron: v = 1, 1, 2.4 (fire, reset), 1             -> out = [0, 0, 1, 0]
    Adding the shortcut after the neuron would give IF([0, 0, 0.4, 0]) + x = [1, 0, 1, 1]."""
    block = SRB(1, 1, 1, stride, lambda: Neuron("if", v_th=1.2))
    convs = [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Conv2d)]
    main = [m for n, m in convs if "short" not in n]
    shortcut = [m for n, m in convs if "short" in n]
    assert len(main) == 2 and len(shortcut) == (stride != 1)
    with torch.no_grad():
        main[0].weight.fill_(0.7)
        main[1].weight.fill_(0.4)
        for m in shortcut:
            m.weight.fill_(1.0)
    for m in block.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = 0.0
    block.eval()
    x = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(4, 1, 1, 1, 1)
    with torch.no_grad():
        y = block(x)
    assert y.view(-1).tolist() == [0.0, 0.0, 1.0, 0.0]


# ---------------------------------------------------------------------------------------------
# Parent selection in the evolutionary search
# ---------------------------------------------------------------------------------------------

TOP = ["SRB_k3"] * 5, ["SRB_k5"] * 5, ["SRB_k3", "SRB_k5", "SRB_k3", "SRB_k5", "SRB_k3"]


def search_after_generation0(backbone, top, rest, **cfg):
    """A Search that has 'evaluated' `top` (fitness 0.9, 0.8, ...) and `rest` (fitness <= 0.3),
    with lambda = 0 so fitness = accuracy."""
    s = make_search(backbone, SearchConfig(lam=0.0, topk=len(top), **cfg), 1e5, random.Random(7))
    archs = [Arch(a) for a in (*top, *rest)]
    accs = [0.9 - 0.1 * i for i in range(len(top))] + [0.3 - 0.02 * i for i in range(len(rest))]
    # shuffled so that evaluation order does not line up with fitness
    order = list(range(len(archs)))
    random.Random(3).shuffle(order)
    s.tell([archs[i] for i in order], [{"acc": accs[i], "spikes": 1e5, "neuron_spikes": 1e5} for i in order])
    assert [r["arch"] for r in s.topk()] == [str(Arch(a)) for a in top]
    return s


def test_crossover_children_come_from_topk_parents():
    """Crossover only: every child is p1[:cut] + p2[cut:] of two distinct top-k parents. The top-k
    use only SRB blocks, every other record only skip/SCB: a child of a low-fitness parent shows."""
    rng = random.Random(11)
    rest = [[rng.choice(["skip_connect", "SCB_k3", "SCB_k5"]) for _ in range(5)] for _ in range(9)]
    s = search_after_generation0(get_backbone("AutoSNN_16"), TOP, rest, pool=6, mutations=0,
                                 crossovers=6, tries=30)
    pool = s.propose()
    assert len(pool) == 6
    parents = [Arch(p) for p in TOP]
    for child in pool:
        assert all(any(child[i] == p[i] for p in parents) for i in range(5)), child
        assert any(child == Arch(p1[:c] + p2[c:]) for p1 in parents for p2 in parents if p1 != p2
                   for c in range(1, 5)), child


def test_mutation_children_come_from_topk_parents():
    """Mutation only, two candidates and mutation_prob = 1: a mutant is its parent with every
    position flipped, so the pool is exactly the flipped top-k (the 3 fittest of 10)."""
    bb = get_backbone("AutoSNN_16", candidates=("skip_connect", "SCB_k3"))
    flip = {"skip_connect": "SCB_k3", "SCB_k3": "skip_connect"}
    def arch(bits):                   # "11100" -> SCB_k3-SCB_k3-SCB_k3-skip_connect-skip_connect
        return [("skip_connect", "SCB_k3")[int(b)] for b in bits]
    top = [arch(b) for b in ("11100", "11010", "10110")]
    rest = [arch(b) for b in ("11111", "00000", "10000", "01000", "00100", "11000", "10001")]
    s = search_after_generation0(bb, top, rest, pool=3, mutations=3, crossovers=0, mutation_prob=1.0,
                                 tries=30)
    pool = s.propose()
    want = {str(Arch(flip[b] for b in p)) for p in top}
    assert want.isdisjoint(s.seen())
    assert {str(a) for a in pool} == want


def test_mutation_children_within_mutation_distance():
    """Mutation only, five candidates, mutation_prob 0.2: every child agrees with some top-k parent
    at the positions a mutation left alone. The top-k use SRB blocks only and every other record
    skip/SCB only, so a child keeps at least one SRB position of a parent unless all 5 mutated
    (probability 0.2^5 per child; the seed is fixed)."""
    rng = random.Random(5)
    rest = [[rng.choice(["skip_connect", "SCB_k3", "SCB_k5"]) for _ in range(5)] for _ in range(9)]
    s = search_after_generation0(get_backbone("AutoSNN_16"), TOP, rest, pool=8, mutations=8,
                                 crossovers=0, mutation_prob=0.2, tries=30)
    pool = s.propose()
    assert len(pool) == 8
    parents = [Arch(p) for p in TOP]
    dist = [min(sum(a != b for a, b in zip(child, p)) for p in parents) for child in pool]
    # Binomial(5, 0.2) given >= 1 change: mostly 1 or 2 positions away from its parent
    assert all(d <= 4 for d in dist) and sum(d <= 2 for d in dist) >= 6, dist


# ---------------------------------------------------------------------------------------------
# Retraining reports the final epoch
# ---------------------------------------------------------------------------------------------

def test_retrain_reports_last_epoch(tmp_path, monkeypatch):
    """The test accuracy of epoch 1 is forced to 0.9 and of every later evaluation to 0.2:
    results.json's test_acc is the last one, the best only in best_test_acc_over_epochs."""
    real = evaluation.evaluate_model
    accs = iter([0.9])

    def scripted(*args, **kwargs):
        result = real(*args, **kwargs)
        result["acc"] = next(accs, 0.2)
        return result

    monkeypatch.setattr(train, "evaluate_model", scripted)     # imported by name into train.py
    monkeypatch.setattr(train, "plot_run", no_plots)
    argv = ["--stage", "retrain", "--arch", str(AUTOSNN), "--dataset", "synthetic", "--n-train", "16",
            "--n-test", "16", "--backbone", "AutoSNN_4", "--T", "2", "--batch-size", "16",
            "--eval-batch-size", "16", "--retrain-epochs", "2", "--eval-every", "1", "--log-every", "0",
            "--device", "cpu", "--out", str(tmp_path), "--name", "r"]
    assert train.main(argv) == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["test_acc"] == 0.2
    assert res["best_test_acc_over_epochs"] == 0.9
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_acc"] for r in rows if r.get("stage") == "retrain"] == [0.9, 0.2]


# ---------------------------------------------------------------------------------------------
# Evaluating with the super-network, BN recalibration
# ---------------------------------------------------------------------------------------------

def trained_supernet(archs, v_th=0.3):
    """A small super-network whose BN running statistics are those of its training-mode batch
    statistics on `archs` (a cumulative average over one forward per architecture), so that deep
    layers fire in eval mode too. -> (net, x [10, 3, 32, 32], y [10])."""
    torch.manual_seed(0)
    net = SpikingNetwork("AutoSNN_4", num_classes=4, T=2, v_th=v_th)
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2
    y = torch.randint(0, 4, (10,), generator=torch.Generator().manual_seed(3))
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = None
    with torch.no_grad():
        for a in archs:
            net(x, a)
    for m in bns:
        m.momentum = 0.1
    return net, x, y


def test_evaluate_pool_equals_plain_forward():
    rng = random.Random(4)
    archs = [AUTOSNN, parse_arch(["skip_connect"] * 5)]
    archs += [sample_arch(get_backbone("AutoSNN_4"), rng) for _ in range(4)]
    net, x, y = trained_supernet(archs)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    pooled = evaluation.evaluate_pool(net, archs, batches)
    spikes = []
    for a, r in zip(archs, pooled):
        single = evaluation.evaluate_model(net, batches, a)
        net.eval()
        with torch.no_grad():
            out, stats = net(x, a)                        # eval BN: batch split does not matter
        summary = stats.summary()
        assert r["acc"] == single["acc"] == (out.argmax(1) == y).sum().item() / len(y)
        assert r["spikes"] == pytest.approx(single["spikes"]) == pytest.approx(summary["spikes"])
        assert r["neuron_spikes"] == pytest.approx(summary["neuron_spikes"])
        assert r["per_layer"].keys() == summary["per_layer"].keys()
        for k, v in summary["per_layer"].items():
            assert r["per_layer"][k] == pytest.approx(v), k
        assert r["energy"]["sops"] == pytest.approx(single["energy"]["sops"])
        spikes.append(r["spikes"])
    assert len(set(spikes)) == len(archs)                 # the architectures really differ


def test_recalibrate_bn_is_cumulative_average():
    """Each BN's running mean/var after recalibration = the plain average, over every batch (and
    every time step, for the per-step BN of [T, B, C, H, W] inputs), of that batch's mean and
    unbiased variance. An exponential average (momentum 0.1) would weigh the last batches more."""
    net, x, _ = trained_supernet([AUTOSNN])
    child = net.child(AUTOSNN)
    bns = [m for m in child.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    inputs = {m: [] for m in bns}
    hooks = [m.register_forward_hook(lambda m, inp, out: inputs[m].append(inp[0].detach().clone()))
             for m in bns]
    gen = torch.Generator().manual_seed(9)
    batches = [(torch.randn(5, 3, 32, 32, generator=gen) * (1 + i), None) for i in range(3)]
    try:
        evaluation.recalibrate_bn(child, AUTOSNN, batches)
    finally:
        for h in hooks:
            h.remove()
    for m in bns:
        assert inputs[m], "every BN of the child is on its path"
        steps = [z for batch in inputs[m] for z in (batch.unbind(0) if batch.dim() == 5 else [batch])]
        mean = torch.stack([z.mean(dim=(0, 2, 3)) for z in steps]).mean(0)
        var = torch.stack([z.var(dim=(0, 2, 3), unbiased=True) for z in steps]).mean(0)
        assert len(steps) >= 3
        assert torch.allclose(m.running_mean, mean, rtol=1e-4, atol=1e-5)
        assert torch.allclose(m.running_var, var, rtol=1e-4, atol=1e-5)


def test_bn_recalibration_changes_the_evaluation():
    """evaluate_archs with recalib_batches evaluates each architecture as a child whose BN statistics were
    re-estimated on those batches: the numbers of that child evaluated by hand, and not those of the
    super-network's own statistics (a recalibration that does nothing gave those, and no test saw it)."""
    net, x, y = trained_supernet([AUTOSNN])
    val = [(x, y)]
    gen = torch.Generator().manual_seed(5)
    recalib = [(torch.randn(6, 3, 32, 32, generator=gen) * 4 + 1, None) for _ in range(2)]   # other statistics
    archs = [AUTOSNN, parse_arch("SCB_k3-SRB_k3-SCB_k5-skip_connect-SRB_k5")]
    with_recalib = evaluation.evaluate_archs(net, archs, lambda: val, lambda: recalib)
    without = evaluation.evaluate_archs(net, archs, lambda: val)
    for a, got, plain in zip(archs, with_recalib, without):
        child = net.child(a)
        evaluation.recalibrate_bn(child, a, recalib)
        want = evaluation.evaluate_pool(child, [a], val)[0]
        assert (got["acc"], got["spikes"], got["neuron_spikes"]) == (want["acc"], want["spikes"], want["neuron_spikes"])
        assert got["spikes"] != plain["spikes"]                 # the test can tell recalibration from none
    assert [r["spikes"] for r in without] == [r["spikes"] for r in evaluation.evaluate_archs(net, archs, lambda: val)]


def test_random_search_draws_fresh_architectures_every_generation():
    """RandomSearch's later generations are the next unseen sample_arch draws of its generator, the same
    generator state as after generation 1: not mutants or crossovers of the fittest (evolution's operators)."""
    bb = get_backbone("AutoSNN_16")
    s = make_search(bb, SearchConfig(search_algo="random", iterations=3, pool=6, topk=2, mutations=4, crossovers=2),
                    1e5, random.Random(4))
    for _ in range(2):
        first = s.propose()
        s.tell(first, [{"acc": 0.1 * (i + 1), "spikes": 1e5, "neuron_spikes": 1e5} for i in range(len(first))])
        rng, taken, want = random.Random(), s.seen(), []
        rng.setstate(s.rng.getstate())
        while len(want) < 6:
            a = sample_arch(bb, rng)
            if str(a) not in taken:
                taken.add(str(a))
                want.append(a)
        assert s.propose() == want
        s.rng.setstate(rng.getstate())      # as if proposed: the next generation continues from here


def test_no_grad_loop_rounds_the_membrane_as_the_equation_on_the_threshold():
    """A membrane that lands exactly on v_th at step 2 under v + (x - v) * k in float32 (it fires: H(0) = 1),
    and just below it under v + (x*k - v*k): the evaluation loop, the training loop and the neuron layer in
    both modes fire exactly where the equation's rounding says. Random inputs rarely land within an ulp of
    v_th, so the bit-for-bit tests against random inputs let `v += x*k - v*k` through."""
    from neurons import neuron_loop, no_grad_loop
    k = torch.tensor(0.8666727542877197)                  # float32 values (found by search)
    x = torch.tensor([0.44758445024490356, 1.0941628217697144, 0.0]).view(3, 1)
    v1 = x[0] * k                                          # step 1 from v = 0
    v2 = v1 + (x[1] - v1) * k                              # the equation's rounding
    assert v2.item() == 1.0 and (v1 + (x[1] * k - v1 * k)).item() < 1.0      # on the edge; `v += x*k - v*k` is off it
    want = [0.0, 1.0, 0.0]
    assert no_grad_loop(x.clone(), k, 1.0).view(-1).tolist() == want
    assert neuron_loop(x.clone(), lambda: k, 1.0, 2.0).view(-1).tolist() == want
    n = Neuron("plif", tau0=2.0)
    with torch.no_grad():
        n.w.fill_(torch.logit(k.double()).float().item())
        assert torch.sigmoid(n.w) == k                    # the layer's leak is this k
        assert n(x.clone()).view(-1).tolist() == want
    assert n(x.clone().requires_grad_()).view(-1).tolist() == want


def test_nondominated_sort_when_a_later_point_dominates():
    """Fronts do not depend on the order of the points: a point dominated by a later one is not on the
    first front (hand-made lists that put dominating points first missed a one-sided comparison)."""
    from pareto import nondominated_sort
    assert nondominated_sort([(1, 1), (0, 0)]) == [[1], [0]]
    assert nondominated_sort([(2, 2), (1, 3), (1, 1), (0, 0)]) == [[3], [2], [0, 1]]
    assert nondominated_sort([(0, 0), (1, 1)]) == [[0], [1]]
