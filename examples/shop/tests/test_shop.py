import pytest

from shop.__main__ import serve
from shop.cart import Cart
from shop.inventory import Inventory, OutOfStock


def test_total_with_discount_and_tax():
    cart = Cart(Inventory({"tea": 5}))
    cart.add("tea", 2)
    assert cart.total("TEA10") == round((900 - 90) * 1.2)


def test_out_of_stock():
    cart = Cart(Inventory({"pot": 0}))
    with pytest.raises(OutOfStock):
        cart.add("pot")


def test_serve_reports_out_of_stock(capsys):
    assert serve(Inventory({}), [("mug", 1)]) is None
    assert "sorry" in capsys.readouterr().out
