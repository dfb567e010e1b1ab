"""Naive per-sample references for every registered method's loss, written from the sources' equations one
sample and one class at a time in plain Python floats (float64; no torch, nothing shared with the package), for
tests/test_methods.py."""

import math


def _log_softmax(z):
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def _kl(log_q, log_p):
    return sum(math.exp(lq) * (lq - lp) for lq, lp in zip(log_q, log_p))


def _ce(z, y):
    return -_log_softmax(z)[y]


def naive_ce(zs, zt, y, params, counts, epoch, epochs, extra):
    return sum(_ce(zs[i], y[i]) for i in range(len(y))) / len(y)


def naive_kd(zs, zt, y, p, counts, epoch, epochs, extra):
    total = 0.0
    for i in range(len(y)):
        log_q = _log_softmax([v / p.T for v in zt[i]])
        log_p = _log_softmax([v / p.T for v in zs[i]])
        total += p.a_ce * _ce(zs[i], y[i]) + p.a_kd * p.T**2 * _kl(log_q, log_p)
    return total / len(y)


def naive_bkd(zs, zt, y, p, counts, epoch, epochs, extra):
    w = [(1 - p.beta) / (1 - p.beta**n) for n in counts]
    w = [len(w) * v / sum(w) for v in w]
    if epoch < p.weights_from_epoch + 1:
        w = [1.0] * len(w)
    total = 0.0
    for i in range(len(y)):
        q = [math.exp(v / p.T) * wc for v, wc in zip(zt[i], w)]  # teacher softmax re-weighted per class
        log_q = [math.log(v / sum(q)) for v in q]
        log_p = _log_softmax([v / p.T for v in zs[i]])
        total += _ce(zs[i], y[i]) + p.alpha * p.T**2 * _kl(log_q, log_p)
    return total / len(y)


def naive_bsce(zs, zt, y, p, counts, epoch, epochs, extra):
    return sum(_ce([v + math.log(n) for v, n in zip(zs[i], counts)], y[i]) for i in range(len(y))) / len(y)


def naive_la(zs, zt, y, p, counts, epoch, epochs, extra):
    total = sum(counts)
    return sum(
        _ce([v + p.tau * math.log(n / total) for v, n in zip(zs[i], counts)], y[i]) for i in range(len(y))
    ) / len(y)


def _warm(epoch, warmup, epochs):
    return min(epoch / max(1, round(warmup * epochs / 240)), 1.0)


def _probs(z, T):
    e = [math.exp(v / T - max(z) / T) for v in z]
    return [v / sum(e) for v in e]


def _kl_probs(q, p):
    return sum(a * math.log(a / b) for a, b in zip(q, p) if a > 0)


def naive_dkd(zs, zt, y, p, counts, epoch, epochs, extra):
    total = 0.0
    for i in range(len(y)):
        ps, pt = _probs(zs[i], p.T), _probs(zt[i], p.T)
        t = y[i]
        tckd = _kl_probs([pt[t], 1 - pt[t]], [ps[t], 1 - ps[t]])
        others = [c for c in range(len(ps)) if c != t]
        qs = [ps[c] / sum(ps[o] for o in others) for c in others]
        qt = [pt[c] / sum(pt[o] for o in others) for c in others]
        kd = p.T**2 * (p.alpha * tckd + p.beta * _kl_probs(qt, qs))
        total += _ce(zs[i], t) + _warm(epoch, p.warmup, epochs) * kd
    return total / len(y)


def naive_dive(zs, zt, y, p, counts, epoch, epochs, extra):
    total = 0.0
    for i in range(len(y)):
        t = [v**p.power for v in _probs(zt[i], p.tau)]
        t = [v / sum(t) for v in t]
        bsce = _ce([v + math.log(n) for v, n in zip(zs[i], counts)], y[i])
        total += (1 - p.alpha) * bsce + p.alpha * p.tau**2 * _kl_probs(t, _probs(zs[i], p.tau))
    return total / len(y)


def naive_rekd(zs, zt, y, p, counts, epoch, epochs, extra):
    k = min(5, len(zs[0]) - 2) if p.k is None else p.k
    total = 0.0
    for i in range(len(y)):
        source = zs[i] if p.topk_from == "student" else zt[i]
        top = sorted(range(len(source)), key=lambda c: -source[c])[:k]
        rest = [c for c in range(len(source)) if c not in top]
        ps, pt = _probs(zs[i], p.T), _probs(zt[i], p.T)

        def within(prob, members):
            return [prob[c] / sum(prob[m] for m in members) for c in members]

        tisd = _kl_probs(within(pt, top), within(ps, top))
        ntid = _kl_probs(within(pt, rest), within(ps, rest))
        total += _ce(zs[i], y[i]) + _warm(epoch, p.warmup, epochs) * p.T**2 * (p.alpha * tisd + p.beta * ntid)
    return total / len(y)


def naive_ldam_drw(zs, zt, y, p, counts, epoch, epochs, extra):
    m = [n**-0.25 for n in counts]
    m = [v * p.max_m / max(m) for v in m]
    deferred = epoch >= round(p.defer_at * epochs) + 1
    if deferred:
        w = [(1 - p.beta) / (1 - p.beta**n) for n in counts]
        w = [len(w) * v / sum(w) for v in w]
    else:
        w = [1.0] * len(counts)
    num = den = 0.0
    for i in range(len(y)):
        z = [p.s * (v - (m[c] if c == y[i] else 0.0)) for c, v in enumerate(zs[i])]
        num += w[y[i]] * _ce(z, y[i])
        den += w[y[i]]
    return num / den  # PyTorch's weight= semantics


def naive_krdistill(zs, zt, y, p, counts, epoch, epochs, extra):
    method, fs, ft = extra["method"], extra["fs"], extra["ft"]
    total_n = sum(counts)
    out = 0.0
    for i in range(len(y)):
        loss = _ce(zs[i], y[i])
        if p.logit_term:
            zr = [
                (v / p.T if p.prior_after_temper else v) - p.tau * math.log(n / total_n) for v, n in zip(zt[i], counts)
            ]
            if p.swap == "all" or (p.swap == "tail" and counts[y[i]] <= method.ctx.many_threshold):
                top = max(range(len(zr)), key=lambda c: zr[c])
                zr[top], zr[y[i]] = zr[y[i]], zr[top]
            target = _probs(zr, 1.0 if p.prior_after_temper else p.T)
            loss += p.alpha * p.T**2 * _kl_probs(target, _probs(zs[i], p.T))
        if p.feature_term:
            W, b = method.projector.weight.double().tolist(), method.projector.bias.double().tolist()
            proto = method.prototypes.double().tolist()[y[i]]
            proj = [sum(W[r][k] * fs[i][k] for k in range(len(fs[i]))) + b[r] for r in range(len(W))]
            target = [(1 - p.lam) * a + p.lam * m for a, m in zip(ft[i], proto)]
            na, nt = math.sqrt(sum(v * v for v in proj)), math.sqrt(sum(v * v for v in target))
            ramp = min(epoch / p.feature_warmup, 1.0) if p.feature_warmup > 0 else 1.0
            loss += p.beta * ramp * sum((a / na - t / nt) ** 2 for a, t in zip(proj, target))
        out += loss
    return out / len(y)


def naive_ltkd(zs, zt, y, p, counts, epoch, epochs, extra):
    ctx = extra["method"].ctx
    groups = [
        [c for c, n in enumerate(counts) if n > ctx.many_threshold],
        [c for c, n in enumerate(counts) if ctx.few_threshold <= n <= ctx.many_threshold],
        [c for c, n in enumerate(counts) if n < ctx.few_threshold],
    ]
    groups = [g for g in groups if g]  # absent groups dropped
    pi = [sum(counts[c] for c in g) / sum(counts) for g in groups]
    total = 0.0
    for i in range(len(y)):
        ps, pt = _probs(zs[i], p.T), _probs(zt[i], p.T)
        mass_s, mass_t = [sum(ps[c] for c in g) for g in groups], [sum(pt[c] for c in g) for g in groups]
        rebalanced = [m / share**p.tau for m, share in zip(mass_t, pi)]
        cross = _kl_probs([v / sum(rebalanced) for v in rebalanced], mass_s)
        within = sum(
            _kl_probs([pt[c] / mass_t[k] for c in g], [ps[c] / mass_s[k] for c in g]) for k, g in enumerate(groups)
        ) / len(groups)
        total += _ce(zs[i], y[i]) + p.T**2 * (p.alpha * cross + p.beta * within)
    return total / len(y)


REFERENCES = {
    "ce": naive_ce,
    "kd": naive_kd,
    "bkd": naive_bkd,
    "bsce": naive_bsce,
    "la": naive_la,
    "dkd": naive_dkd,
    "dive": naive_dive,
    "rekd": naive_rekd,
    "ldam_drw": naive_ldam_drw,
    "krdistill": naive_krdistill,
    "ltkd": naive_ltkd,
}
