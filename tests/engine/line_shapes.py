"""Shapes of control flow whose line events instrumented code must keep: every way out of a
function (falling off the end after nested branches, loops with else, break, early return,
try/finally, with, match, exceptions raised and caught at every level), generators and async
generators driven every way (exhaustion, return, throw, close), one-line bodies. Read as
text by tests/engine/test_line_events.py (never imported; its CALLS say how each function is
called)."""

import sys
import warnings


class S:
    def __init__(self, included, excluded):
        self._included, self._excluded = included, excluded

    def add(self, item):
        if self._included is None:
            if item in self._excluded:
                self._excluded.remove(item)
        else:
            self._included.add(item)


def pairs(root, multi):
    curr = root
    if multi:
        while curr:
            yield curr
            curr = curr - 1
    else:
        while curr:
            yield curr
            curr = curr - 2


def nested_if(a, b, c):
    x = 0
    if a:
        if b:
            x = 1
        elif c:
            x = 2
    else:
        if c:
            x = 3
        else:
            if b and c:
                x = 4
    return x if a else None


def tail_nested_if(a, b, c):
    if a:
        if b:
            if c:
                a = 1
        else:
            b = 2
    elif b or c:
        c = 3


def tail_bool_test(a, b):
    if a and b:
        a = 1
    elif (a or
          b):
        b = 2


def tail_ifexp(a):
    if a if a else not a:
        a = 1


def one_line_if(x):
    if x < 0: raise ValueError(x)


def one_line_if_tail(x):
    x += 1
    if x > 2: x = 0


def loop_else(xs, stop):
    for x in xs:
        if x == stop:
            break
    else:
        return "exhausted"


def while_else(n, stop):
    while n:
        n -= 1
        if n == stop:
            break
    else:
        n = -1


def loop_tail_break(xs):
    for x in xs:
        if x:
            break
        continue


def loop_tail(xs):
    total = 0
    for x in xs:
        total += x


def while_tail(n):
    while n > 0:
        n -= 1


def while_true(n):
    while True:
        n -= 1
        if n < 0:
            return n


def early_return_in_loop(xs):
    for x in xs:
        for y in xs:
            if x == y * 2:
                return x, y
        if x < 0:
            return None


def try_finally(x):
    try:
        if x:
            return 1 / x
    finally:
        x = 0


def try_finally_tail(x):
    try:
        y = 1 / x
    finally:
        if x:
            y = 2


def try_finally_if_else(x):
    try:
        y = x
    finally:
        if x:
            y = 1
        else:
            y = 2


def try_except_levels(x):
    try:
        try:
            if x == 1:
                raise KeyError(x)
            if x == 2:
                raise ValueError(x)
            if x == 3:
                raise TypeError(x)
        except KeyError:
            x = "caught inside"
        finally:
            x = str(x)
    except ValueError as exc:
        x = exc
    else:
        x = "no error"


def try_except_tail(x):
    try:
        y = 1 / x
    except ZeroDivisionError:
        y = None
    except TypeError as exc:
        if x:
            y = exc


def try_else_tail(x):
    try:
        x = int(x)
    except ValueError:
        pass
    else:
        if x:
            x = 1


def raise_from_nested(x):
    def inner(y):
        if y:
            raise LookupError(y)
        return y

    try:
        inner(x)
    except LookupError:
        if x > 1:
            raise
    return inner(x - 1)


def reraise_new(x):
    try:
        return {}[x]
    except KeyError as exc:
        raise ValueError(x) from exc


def with_tail(x):
    with warnings.catch_warnings():
        if x:
            x = 1
        else:
            x = 2


def with_raise(x):
    with warnings.catch_warnings():
        if x:
            raise RuntimeError(x)


def match_tail(x):
    match x:
        case 0:
            x = "zero"
        case [a, b]:
            x = a + b
        case {"k": v} if v:
            x = v
        case str():
            pass


def match_return(x):
    match x:
        case int(n) if n > 1:
            return n
        case _:
            x = None


def comprehension(xs):
    ys = [x * 2 for x in xs if x]
    zs = {x: y for x, y in zip(xs, ys)}
    return sorted(zs)


def lambda_tail(xs):
    key = lambda x: -x  # noqa: E731
    xs = sorted(xs, key=key)


def gen_return(n):
    for i in range(n):
        if i == 3:
            return "early"
        yield i


def gen_try(n):
    try:
        yield n
        yield n + 1
    except ValueError:
        yield "caught"
    finally:
        n = 0


def gen_from(n):
    yield from range(n)
    if n:
        yield from gen_return(n)


async def coro(x):
    if x:
        return x
    else:
        x = -1


async def agen(n):
    for i in range(n):
        try:
            yield i
        except KeyError:
            return
    if n:
        yield "end"


def one_line(x): return x + 1


def one_line_raise(x): raise KeyError(x)


def one_line_warn(): warnings.warn("old", DeprecationWarning, stacklevel=2)


def one_line_caller(): return sys._getframe(1).f_code.co_name


def doc_shares_line(x):
    """Doc."""; return x * 2


def deep_raise(x):
    if x:
        [1][x]
    return x


def closure(x):
    def inner():
        nonlocal x
        x += 1
        return x
    inner()
    if x > 2:
        x = inner()


def locals_seen(a=1, b=2):
    kwargs = dict(locals())
    return sorted(kwargs)


def gen_locals(a):
    b = a
    yield sorted(locals())
    yield b


def return_ifexp(a, x):
    return x if a else None


def return_ifexp_lines(a, x):
    return (x
            if a
            else None)


def return_chain(lo, x, hi):
    return lo <= x < hi


def tail_chain(lo, x, hi):
    if lo <= x < hi:
        x = 0
