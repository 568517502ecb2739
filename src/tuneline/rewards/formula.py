"""A multi grader's `calculate_output`: arithmetic over its graders' scores, parsed with `ast`.

Never eval(): the formula comes from a recipe. Only the pieces OpenAI's multi grader documents
are allowed (numbers, grader names, + - * / **, unary minus, parentheses, and a few math
functions); anything else, a call to `__import__` or an attribute such as `a.__class__`, is
refused when the recipe is checked, with the piece named.
"""

from __future__ import annotations

import ast
import math
import operator

from .errors import GraderError

FUNCTIONS = {"min": min, "max": max, "abs": abs, "sqrt": math.sqrt, "log": math.log, "exp": math.exp,
             "floor": math.floor, "ceil": math.ceil}
_VARIADIC = {"min", "max"}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
ALLOWED = "numbers, grader names, + - * / **, unary -, parentheses, and " + ", ".join(FUNCTIONS)


class Formula:
    """A checked formula; `value(scores)` computes it from {grader name: score}."""

    def __init__(self, text, names: list[str], where: str):
        if not isinstance(text, str) or not text.strip():
            raise GraderError(f"{where}: give a formula over the graders' names, e.g. "
                              f"\"{' + '.join(names[:2]) or 'a'}\"; allowed: {ALLOWED}")
        self.text, self.names, self.where = text, names, where
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as e:
            raise GraderError(f"{where}: {text!r} is not a formula ({e.msg}); allowed: {ALLOWED}") from None
        self._check(tree.body)
        self.tree = tree.body

    def _refuse(self, node, why: str):
        piece = ast.get_source_segment(self.text.strip(), node) or ast.dump(node)
        raise GraderError(f"{self.where}: {piece!r} {why}; allowed: {ALLOWED}")

    def _check(self, node) -> None:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                self._refuse(node, "is not a number")
        elif isinstance(node, ast.Name):
            if node.id not in self.names:
                known = ", ".join(self.names)
                self._refuse(node, f"is not one of this multi grader's graders ({known})"
                             + (" (a function needs parentheses)" if node.id in FUNCTIONS else ""))
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                self._refuse(node, "uses an operator that is not allowed")
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                self._refuse(node, "uses an operator that is not allowed")
            self._check(node.operand)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                self._refuse(node.func, "is not an allowed function")
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                self._refuse(node, "passes keyword or starred arguments")
            n = len(node.args)
            if (node.func.id in _VARIADIC and n < 1) or (node.func.id not in _VARIADIC and n != 1):
                self._refuse(node, f"gives {node.func.id} {n} arguments")
            for a in node.args:
                self._check(a)
        elif isinstance(node, ast.Attribute):
            self._refuse(node, "is attribute access, which is not allowed")
        else:
            self._refuse(node, "is not allowed in a formula")

    def value(self, scores: dict[str, float]) -> float:
        """The formula's value. Math errors (division by zero, log of 0, overflow) raise
        ArithmeticError or ValueError; the caller scores the row 0 and counts it."""
        return float(self._eval(self.tree, scores))

    def _eval(self, node, scores):
        if isinstance(node, ast.Constant):
            return float(node.value)  # floats only: an int ** int could be a huge, slow number
        if isinstance(node, ast.Name):
            return float(scores[node.id])
        if isinstance(node, ast.BinOp):
            out = _BINARY[type(node.op)](self._eval(node.left, scores), self._eval(node.right, scores))
            if isinstance(out, complex):  # (-8) ** (1/3) in Python
                raise ValueError(f"{ast.unparse(node)} has no real value")  # noqa: TRY004 - a math error, like log(-1)
            return out
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, scores))
        args = [self._eval(a, scores) for a in node.args]
        return float(FUNCTIONS[node.func.id](*args))
