"""The start-of-run profile's window, as the trainer feeds it: on CUDA the compute time of a step
arrives one step late (ComputeClock reads its events then), so pairing by arrival would count the
warm-up step's compute, which on a GPU is dominated by cuDNN's algorithm search."""

import pytest

from vortex_data.train.profiling import StartProfile, diagnose


def feed(profile, steps, wait, compute, lag):
    """What Trainer.run hands the profile: step n's wait, and the compute read after step n."""
    done = None
    for n in range(1, steps + 1):
        arrived = compute[n - 1 - lag] if n - 1 - lag >= 0 else 0.0
        got = profile.add(n, wait[n - 1], arrived)
        if got is not None:
            assert done is None, "the window reports once"
            done = (n, got)
    return done


@pytest.mark.parametrize("lag", [0, 1])
def test_the_warm_up_step_stays_out_of_the_window_whatever_the_clock_lag(lag):
    k = 5
    wait = [3.0] + [0.01] * 20            # step 1 waits for the workers to start
    compute = [24.0] + [0.05] * 20        # step 1 autotunes (cuDNN): 24 s
    n, timer = feed(StartProfile(k, lag), 20, wait, compute, lag)
    assert n == k + 1 + lag
    assert timer.steps == k
    assert timer.compute == pytest.approx(k * 0.05) and timer.wait == pytest.approx(k * 0.01)
    report = diagnose(timer, batch_size=16, workers_now=2)
    assert report.compute_samples_per_s == pytest.approx(16 / 0.05)


def test_pairing_by_arrival_was_the_bug_the_window_fixes():
    """The old window (steps 2..K+1 of whatever arrived) on a one-step-late clock: the warm-up
    step's 24 s land in it, and a loader that waits 40 % of each steady step looks fine."""
    k, lag = 5, 1
    wait = [3.0] + [0.04] * 20
    compute = [24.0] + [0.06] * 20
    old_compute = sum(compute[n - 1 - lag] for n in range(2, k + 2))
    old_wait = sum(wait[n - 1] for n in range(2, k + 2))
    assert old_wait / (old_wait + old_compute) < 0.1  # the old verdict: not starving
    _, timer = feed(StartProfile(k, lag), 20, wait, compute, lag)
    assert diagnose(timer, 16, 2).starving and diagnose(timer, 16, 2).workers_needed == 4


def test_no_profile_when_turned_off():
    assert feed(StartProfile(0, 1), 10, [0.1] * 10, [0.1] * 10, 1) is None
