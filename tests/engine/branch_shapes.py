"""Functions whose line events and branches instrumented code must keep: exits from a branch
at the end of a function, a break out of a loop on the first line, a generator, a return
inside try/finally, exceptions. Read as text by tests/engine/test_compiler.py and
tests/plugin/test_plugin.py (never imported)."""


def tail_if(x):
    y = x
    if y:
        y += 1


def first_loop(xs):
    for x in xs:
        if x:
            break


def gen(n):
    for i in range(n):
        yield i
    if n > 100:
        return


def nested(y):
    try:
        return 1 / y
    except ZeroDivisionError:
        return None
    finally:
        y = 0


def fails(x):
    if x:
        raise ValueError(x)
    return x


def while_first(n):
    while n:
        n -= 1
    else:
        return "done"


def deco(func):
    return func


@deco
def decorated(x):
    for item in x:
        if item:
            raise KeyError(item)
