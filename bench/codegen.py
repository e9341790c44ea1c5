#!/usr/bin/env python3
"""Code generation: does the model write Python that parses and passes its tests?

The original design's pending success metric ("code generation produces valid
code"). About 30 small function-writing tasks, each with its own unit tests, go
through ``LLM.chat`` with code-suited parameters (temperature 0.2, a fixed seed,
generation stopped at the end of the first code block). The code is taken out of
the reply, parsed, and run with its tests in a separate Python process with a
timeout (generated code never runs in this process).

    python bench/codegen.py                          # smollm2-135m-instruct from the registry
    python bench/codegen.py --model PATH_OR_NAME --threads 4

Writes ``bench/results/codegen.md`` (and ``codegen.json``). A report, not a test.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Task:
    name: str
    ask: str
    tests: str


TASKS = [
    Task("is_even", "is_even(n) that returns True when the integer n is even, else False",
         "assert is_even(0) and is_even(2) and is_even(-4)\nassert not is_even(1) and not is_even(-3)"),
    Task("factorial", "factorial(n) that returns n! for an integer n >= 0",
         "assert factorial(0) == 1\nassert factorial(1) == 1\nassert factorial(5) == 120\n"
         "assert factorial(10) == 3628800"),
    Task("fibonacci", "fibonacci(n) that returns the n-th Fibonacci number, with fibonacci(0) == 0 "
         "and fibonacci(1) == 1",
         "assert [fibonacci(i) for i in range(10)] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n"
         "assert fibonacci(30) == 832040"),
    Task("reverse_string", "reverse_string(s) that returns the string s reversed",
         "assert reverse_string('abc') == 'cba'\nassert reverse_string('') == ''\n"
         "assert reverse_string('a b') == 'b a'"),
    Task("is_palindrome", "is_palindrome(s) that returns True when the string s reads the same "
         "forwards and backwards",
         "assert is_palindrome('racecar') and is_palindrome('') and is_palindrome('abba')\n"
         "assert not is_palindrome('abc')"),
    Task("sum_list", "sum_list(xs) that returns the sum of the numbers in the list xs",
         "assert sum_list([1, 2, 3]) == 6\nassert sum_list([]) == 0\nassert sum_list([-1, 1.5]) == 0.5"),
    Task("largest", "largest(xs) that returns the largest number in the non-empty list xs",
         "assert largest([3, 9, 2]) == 9\nassert largest([-5, -2, -9]) == -2\nassert largest([7]) == 7"),
    Task("count_vowels", "count_vowels(s) that returns how many vowels (a, e, i, o, u, upper or lower "
         "case) the string s contains",
         "assert count_vowels('hello') == 2\nassert count_vowels('AEIOU xyz') == 5\n"
         "assert count_vowels('') == 0"),
    Task("celsius_to_fahrenheit", "celsius_to_fahrenheit(c) that converts a temperature from degrees "
         "Celsius to degrees Fahrenheit",
         "assert celsius_to_fahrenheit(0) == 32\nassert celsius_to_fahrenheit(100) == 212\n"
         "assert abs(celsius_to_fahrenheit(-40) + 40) < 1e-9"),
    Task("is_prime", "is_prime(n) that returns True when the integer n is a prime number",
         "assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]\n"
         "assert not is_prime(1) and not is_prime(-7) and is_prime(97)"),
    Task("gcd", "gcd(a, b) that returns the greatest common divisor of two positive integers",
         "assert gcd(12, 18) == 6\nassert gcd(7, 13) == 1\nassert gcd(100, 10) == 10"),
    Task("lcm", "lcm(a, b) that returns the least common multiple of two positive integers",
         "assert lcm(4, 6) == 12\nassert lcm(7, 3) == 21\nassert lcm(5, 5) == 5"),
    Task("flatten", "flatten(lists) that takes a list of lists and returns one list with all their "
         "items in order",
         "assert flatten([[1, 2], [3], []]) == [1, 2, 3]\nassert flatten([]) == []"),
    Task("unique", "unique(xs) that returns the items of the list xs without duplicates, keeping the "
         "order of their first appearance",
         "assert unique([3, 1, 3, 2, 1]) == [3, 1, 2]\nassert unique([]) == []"),
    Task("word_count", "word_count(s) that returns the number of words in the string s (words are "
         "separated by whitespace)",
         "assert word_count('hello world') == 2\nassert word_count('  one  two three ') == 3\n"
         "assert word_count('') == 0"),
    Task("capitalize_words", "capitalize_words(s) that returns s with the first letter of every "
         "word in upper case, e.g. 'hello world' -> 'Hello World'",
         "assert capitalize_words('hello world') == 'Hello World'\n"
         "assert capitalize_words('python') == 'Python'"),
    Task("squares", "squares(xs) that returns a list of the squares of the numbers in xs",
         "assert squares([1, 2, 3]) == [1, 4, 9]\nassert squares([]) == []\nassert squares([-2]) == [4]"),
    Task("filter_even", "filter_even(xs) that returns a list of the even integers in xs, in order",
         "assert filter_even([1, 2, 3, 4, 6]) == [2, 4, 6]\nassert filter_even([1, 3]) == []"),
    Task("char_frequency", "char_frequency(s) that returns a dict mapping each character of the "
         "string s to the number of times it occurs",
         "assert char_frequency('abca') == {'a': 2, 'b': 1, 'c': 1}\nassert char_frequency('') == {}"),
    Task("binary_search", "binary_search(xs, target) that returns the index of target in the sorted "
         "list xs, or -1 when it is absent",
         "xs = [1, 3, 5, 7, 9, 11]\nassert all(binary_search(xs, v) == i for i, v in enumerate(xs))\n"
         "assert binary_search(xs, 4) == -1 and binary_search([], 1) == -1"),
    Task("merge_sorted", "merge_sorted(a, b) that merges two sorted lists into one sorted list",
         "assert merge_sorted([1, 4, 7], [2, 3, 8]) == [1, 2, 3, 4, 7, 8]\n"
         "assert merge_sorted([], [1]) == [1]"),
    Task("is_anagram", "is_anagram(a, b) that returns True when the strings a and b are anagrams "
         "of each other",
         "assert is_anagram('listen', 'silent')\nassert not is_anagram('abc', 'abd')\n"
         "assert not is_anagram('aab', 'ab')"),
    Task("count_occurrences", "count_occurrences(xs, x) that returns how many times x occurs in the "
         "list xs",
         "assert count_occurrences([1, 2, 1, 1], 1) == 3\nassert count_occurrences([], 5) == 0"),
    Task("power", "power(base, exp) that returns base raised to the integer power exp >= 0",
         "assert power(2, 10) == 1024\nassert power(5, 0) == 1\nassert power(-3, 3) == -27"),
    Task("digit_sum", "digit_sum(n) that returns the sum of the decimal digits of the integer n >= 0",
         "assert digit_sum(0) == 0\nassert digit_sum(1234) == 10\nassert digit_sum(999) == 27"),
    Task("second_largest", "second_largest(xs) that returns the second largest distinct number in "
         "the list xs (it has at least two distinct numbers)",
         "assert second_largest([1, 5, 3]) == 3\nassert second_largest([4, 4, 2]) == 2"),
    Task("fizzbuzz", "fizzbuzz(n) that returns a list of strings for 1..n: 'Fizz' for multiples of 3, "
         "'Buzz' for multiples of 5, 'FizzBuzz' for multiples of both, else the number",
         "assert fizzbuzz(5) == ['1', '2', 'Fizz', '4', 'Buzz']\nassert fizzbuzz(15)[-1] == 'FizzBuzz'"),
    Task("average", "average(xs) that returns the arithmetic mean of the non-empty list of numbers xs",
         "assert average([1, 2, 3, 4]) == 2.5\nassert average([5]) == 5"),
    Task("clamp", "clamp(x, lo, hi) that returns x limited to the range lo..hi",
         "assert clamp(5, 0, 10) == 5\nassert clamp(-1, 0, 10) == 0\nassert clamp(11, 0, 10) == 10"),
    Task("rotate_right", "rotate_right(xs, k) that returns the list xs rotated right by k positions",
         "assert rotate_right([1, 2, 3, 4], 1) == [4, 1, 2, 3]\n"
         "assert rotate_right([1, 2, 3], 3) == [1, 2, 3]\nassert rotate_right([1, 2, 3], 4) == [3, 1, 2]"),
    Task("min_max", "min_max(xs) that returns a tuple (smallest, largest) of the non-empty list xs",
         "assert min_max([3, 1, 2]) == (1, 3)\nassert min_max([7]) == (7, 7)"),
]

FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[^\n]*\n(.*?)(?:\n```|$)", re.S)


def extract_code(text: str) -> str:
    """The first fenced code block (closed or not, since generation stops at its end);
    the whole reply when there is none."""
    m = FENCE.search(text)
    return m.group(1) if m else text


def run_tests(code: str, tests: str, timeout: float) -> tuple[bool, str]:
    """Run the code and then its tests in a fresh, isolated Python process."""
    with tempfile.TemporaryDirectory(prefix="codegen-") as tmp:
        script = Path(tmp) / "check.py"
        script.write_text(code + "\n\n# --- tests ---\n" + tests + "\nprint('PASS')\n")
        try:
            out = subprocess.run([sys.executable, "-I", str(script)], capture_output=True, text=True,
                                 timeout=timeout, cwd=tmp, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, f"timeout after {timeout} s"
    if out.returncode == 0 and out.stdout.strip().endswith("PASS"):
        return True, ""
    err = (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]
    return False, err[:120]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a GGUF path or a registry name")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds for each task's test run")
    ap.add_argument("--out", default="codegen", help="name of the result files in bench/results/")
    args = ap.parse_args()

    from cortex_llama import LLM, GenerationParams

    params = GenerationParams(temperature=args.temperature, seed=args.seed, max_tokens=args.max_tokens,
                              top_p=0.95, top_k=40, min_p=0.05,
                              stop=["\n```\n"])  # the end of the code block (not its opening fence)
    results = []
    t_start = time.perf_counter()
    with LLM(args.model, context_size=2048, threads=args.threads) as llm:
        model_name = Path(llm.model.path).stem
        model_desc = f"{model_name} ({args.model}; GGUF name {llm.name!r}, {llm.model.desc})"
        for task in TASKS:
            question = (f"Write a Python function {task.ask}. Reply with the code in one ```python "
                        "code block.")
            t0 = time.perf_counter()
            c = llm.chat([{"role": "user", "content": question}], params)
            code = extract_code(c.text)
            try:
                ast.parse(code)
                parses = True
            except SyntaxError:
                parses = False
            passed, why = run_tests(code, task.tests, args.timeout) if parses else (False, "syntax error")
            results.append({"task": task.name, "parses": parses, "passes": passed, "why": why,
                            "tokens": len(c.tokens), "finish": c.finish_reason,
                            "seconds": time.perf_counter() - t0, "reply": c.text})
            print(f"{task.name:22} parses={parses!s:5} passes={passed!s:5} {len(c.tokens):4} tokens "
                  f"{why}", flush=True)
    total_s = time.perf_counter() - t_start
    n = len(results)
    n_parse = sum(r["parses"] for r in results)
    n_pass = sum(r["passes"] for r in results)
    summary = (f"{model_desc}: {n_parse}/{n} parse ({n_parse / n:.0%}), {n_pass}/{n} pass their tests "
               f"({n_pass / n:.0%}); temperature {args.temperature}, seed {args.seed}, "
               f"{args.threads} threads, {total_s:.0f} s in all")
    print(summary)

    RESULTS.mkdir(exist_ok=True)
    meta = {"model": model_desc, "temperature": args.temperature, "seed": args.seed,
            "threads": args.threads, "tasks": n, "parses": n_parse, "passes": n_pass,
            "seconds": total_s, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"# Code generation: {model_name}", "",
             f"Model: {model_desc}. {n} function-writing tasks through `LLM.chat` (temperature "
             f"{args.temperature}, top_p 0.95, top_k 40, seed {args.seed}, stop at the end of the code "
             f"block); each reply's first code block is parsed and run with the task's own asserts in a "
             f"separate Python process ({args.timeout:g} s timeout). {meta['date']}.", "",
             f"**Parses: {n_parse}/{n} ({n_parse / n:.0%}). Passes its tests: {n_pass}/{n} "
             f"({n_pass / n:.0%}).**", "",
             "| task | parses | passes | tokens | failure |", "| --- | :---: | :---: | ---: | --- |"]
    for r in results:
        why = r["why"].replace("|", "\\|")
        lines.append(f"| {r['task']} | {'yes' if r['parses'] else 'no'} | {'yes' if r['passes'] else 'no'} | "
                     f"{r['tokens']} | {why} |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / (args.out + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
