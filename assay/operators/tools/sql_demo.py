"""A small seeded DuckDB shop database and text-to-SQL tasks over it, built in code.

`demo_database()` builds (once) `~/.cache/assay/tools/shop-v1.duckdb` (override the folder
with `ASSAY_TOOLS_CACHE`): customers, products and orders from a fixed seed, so every machine
builds the same file. `demo_tasks()` are questions with their gold SQL; the recipe
recipes/tools_sql.yaml reads the same tasks from recipes/data/tools_sql_tasks.jsonl, written
by `write_demo_tasks`.

Column names are deliberately not the obvious ones (`cust_ref`, `qty`, `unit_price_eur`), so
a model that queries without looking at the schema first usually fails: the discipline the
environment scores.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import duckdb

VERSION = "shop-v1"
CITIES = ["Lyon", "Porto", "Gdansk", "Turin", "Ghent", "Bilbao"]
CATEGORIES = ["books", "garden", "kitchen", "toys"]
STATUSES = ["delivered", "shipped", "cancelled", "returned"]


def tools_cache() -> Path:
    default = Path.home() / ".cache" / "assay" / "tools"
    return Path(os.environ.get("ASSAY_TOOLS_CACHE", default))


def build_shop(path: str | Path, seed: int = 0) -> Path:
    """Write the seeded shop database to `path` (replaced if it exists)."""
    rng = random.Random(seed)
    path = Path(path)
    path.unlink(missing_ok=True)
    customers = [
        (i, f"customer_{i:02d}", rng.choice(CITIES), rng.randint(2018, 2025)) for i in range(1, 41)
    ]
    products = [
        (i, f"{cat}_item_{i:02d}", cat, round(rng.uniform(3, 120), 2))
        for i, cat in enumerate((CATEGORIES * 5)[:18], start=1)
    ]
    orders = [
        (
            i,
            rng.randint(1, 40),
            rng.randint(1, 18),
            rng.randint(1, 5),
            f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            rng.choices(STATUSES, weights=[6, 2, 1, 1])[0],
        )
        for i in range(1, 201)
    ]
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE TABLE customers (cust_ref INTEGER PRIMARY KEY, full_name VARCHAR, "
            "home_city VARCHAR, signup_year INTEGER)"
        )
        con.execute(
            "CREATE TABLE products (sku INTEGER PRIMARY KEY, title VARCHAR, category VARCHAR, "
            "unit_price_eur DECIMAL(8, 2))"
        )
        con.execute(
            "CREATE TABLE orders (order_no INTEGER PRIMARY KEY, cust_ref INTEGER, sku INTEGER, "
            "qty INTEGER, placed_on DATE, state VARCHAR)"
        )
        con.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", customers)
        con.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", products)
        con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", orders)
        con.execute("COMMENT ON COLUMN orders.state IS 'delivered, shipped, cancelled or returned'")
    return path


def demo_database() -> Path:
    """The seeded shop database, built once into the tools cache."""
    target = tools_cache() / f"{VERSION}.duckdb"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target and rename: a concurrent builder never sees half a file
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        built = build_shop(Path(tmp) / target.name)
        os.replace(built, target)
    return target


def demo_tasks() -> list[dict[str, Any]]:
    """Questions over the shop database with their gold SQL (ids `shop-<k>`)."""
    templates: list[tuple[str, str]] = []
    for city in CITIES[:4]:
        templates.append(
            (
                f"How many customers live in {city}?",
                f"SELECT COUNT(*) FROM customers WHERE home_city = '{city}'",
            )
        )
    for status in STATUSES:
        templates.append(
            (
                f"How many orders are {status}?",
                f"SELECT COUNT(*) FROM orders WHERE state = '{status}'",
            )
        )
    for category in CATEGORIES:
        templates.append(
            (
                f"What is the total quantity ordered of {category} products?",
                "SELECT SUM(o.qty) FROM orders o JOIN products p ON o.sku = p.sku "
                f"WHERE p.category = '{category}'",
            )
        )
    templates += [
        (
            "What is the title of the most expensive product?",
            "SELECT title FROM products ORDER BY unit_price_eur DESC LIMIT 1",
        ),
        (
            "How many products cost more than 50 euros?",
            "SELECT COUNT(*) FROM products WHERE unit_price_eur > 50",
        ),
        (
            "How many customers signed up in 2024?",
            "SELECT COUNT(*) FROM customers WHERE signup_year = 2024",
        ),
        (
            "Which city has the most customers?",
            "SELECT home_city FROM customers GROUP BY home_city ORDER BY COUNT(*) DESC, "
            "home_city LIMIT 1",
        ),
        (
            "How many orders were placed in March 2025?",
            "SELECT COUNT(*) FROM orders WHERE placed_on >= DATE '2025-03-01' "
            "AND placed_on < DATE '2025-04-01'",
        ),
        (
            "What is the average unit price of kitchen products, in euros?",
            "SELECT ROUND(AVG(unit_price_eur), 2) FROM products WHERE category = 'kitchen'",
        ),
        # one table, no condition: the simplest tasks (list_tables shows the table, one
        # COUNT(*) answers), where a small model's trajectories can be right
        ("How many customers are there?", "SELECT COUNT(*) FROM customers"),
        ("How many products are there?", "SELECT COUNT(*) FROM products"),
        ("How many orders are there?", "SELECT COUNT(*) FROM orders"),
    ]
    return [
        {"id": f"shop-{k}", "question": q, "gold_sql": sql} for k, (q, sql) in enumerate(templates)
    ]


def write_demo_tasks(path: str | Path) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(t) + "\n" for t in demo_tasks()))
    return path
