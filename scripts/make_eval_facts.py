#!/usr/bin/env python3
"""Write docs/eval/facts.jsonl: 300 four-way multiple-choice questions for a local lm-eval run.

Hand-written tables (50 capitals, opposites, plurals, comparatives) and 100 generated sums;
distractors are other answers of the same table (sums: near misses), picked with a fixed seed.
Each choice carries its own leading space or quote, so the task joins with "". The task that
reads the file is docs/eval/gemma_ref_facts.yaml (`gemma-ref eval --tasks gemma_ref_facts
--include-path docs/eval`, from the repository root). Deterministic.
"""

import json
import random
from pathlib import Path

CAPITALS = """France:Paris|Germany:Berlin|Italy:Rome|Spain:Madrid|Portugal:Lisbon|Japan:Tokyo|China:Beijing
|Russia:Moscow|Egypt:Cairo|Kenya:Nairobi|Canada:Ottawa|Mexico:Mexico City|Brazil:Brasília
|Argentina:Buenos Aires|Peru:Lima|Chile:Santiago|Australia:Canberra|India:New Delhi|Greece:Athens
|Turkey:Ankara|Poland:Warsaw|Austria:Vienna|Sweden:Stockholm|Norway:Oslo|Finland:Helsinki
|Denmark:Copenhagen|Ireland:Dublin|Belgium:Brussels|the Netherlands:Amsterdam|Switzerland:Bern
|Hungary:Budapest|Czechia:Prague|Romania:Bucharest|Ukraine:Kyiv|Thailand:Bangkok|Vietnam:Hanoi
|South Korea:Seoul|Indonesia:Jakarta|the Philippines:Manila|Iran:Tehran|Iraq:Baghdad
|Saudi Arabia:Riyadh|Nigeria:Abuja|Ghana:Accra|Morocco:Rabat|Ethiopia:Addis Ababa|Cuba:Havana
|Colombia:Bogotá|Venezuela:Caracas|New Zealand:Wellington"""
OPPOSITES = """hot cold|big small|up down|early late|happy sad|light dark|fast slow|open closed|full empty
|high low|old young|rich poor|strong weak|wet dry|hard soft|loud quiet|first last|inside outside|push pull
|buy sell|win lose|give take|love hate|day night|true false|clean dirty|thick thin|heavy light|long short
|wide narrow|deep shallow|sweet sour|safe dangerous|easy difficult|cheap expensive|alive dead|begin end
|north south|east west|left right|friend enemy|arrive leave|question answer|remember forget|accept refuse
|asleep awake|before after|borrow lend|empty full|minimum maximum"""
PLURALS = """cat cats|dog dogs|child children|mouse mice|man men|woman women|foot feet|tooth teeth|goose geese
|person people|box boxes|bus buses|city cities|baby babies|knife knives|leaf leaves|wolf wolves|potato potatoes
|hero heroes|sheep sheep|fish fish|deer deer|ox oxen|cactus cacti|analysis analyses|crisis crises
|phenomenon phenomena|criterion criteria|church churches|wish wishes|day days|key keys|toy toys|life lives
|wife wives|half halves|shelf shelves|loaf loaves|echo echoes|tomato tomatoes|glass glasses|class classes
|story stories|party parties|lady ladies|boy boys|book books|house houses|tree trees|car cars"""
COMPARATIVES = """good better|bad worse|far farther|big bigger|small smaller|happy happier|easy easier|fast faster
|tall taller|short shorter|hot hotter|cold colder|old older|young younger|strong stronger|weak weaker
|long longer|wide wider|thin thinner|fat fatter|late later|early earlier|busy busier|heavy heavier
|pretty prettier|funny funnier|large larger|nice nicer|safe safer|simple simpler|clean cleaner|dark darker
|light lighter|cheap cheaper|rich richer|poor poorer|high higher|low lower|deep deeper|loud louder
|quiet quieter|soft softer|hard harder|warm warmer|cool cooler|near nearer|bright brighter|smart smarter
|kind kinder|brave braver"""


def table(text):
    return [tuple(p.split(" ")) for p in text.replace("\n", "").split("|")]


def questions():
    rng = random.Random(0)
    out = []

    def add(question, answer, pool):
        wrong = rng.sample(sorted(set(pool) - {answer}), 3)
        choices = wrong + [answer]
        rng.shuffle(choices)
        out.append({"question": question, "choices": choices, "answer": choices.index(answer)})

    caps = [tuple(p.split(":")) for p in CAPITALS.replace("\n", "").split("|")]
    for country, capital in caps:
        add(f"The capital of {country} is", f" {capital}", [f" {c}" for _, c in caps])
    opp = table(OPPOSITES)
    for a, b in opp:
        add(f'The opposite of "{a}" is "', b + '"', [y + '"' for _, y in opp])
    plu = table(PLURALS)
    for a, b in plu:
        add(f'The plural of "{a}" is "', b + '"', [y + '"' for _, y in plu])
    com = table(COMPARATIVES)
    for a, b in com:
        add(f'The comparative of "{a}" is "', b + '"', [y + '"' for _, y in com])
    for _ in range(100):
        x, y = rng.randint(2, 49), rng.randint(2, 49)
        s = x + y
        add(f"{x} + {y} =", f" {s}", [f" {s + d}" for d in (-10, -2, -1, 1, 2, 10)] + [f" {s}"])
    return out


if __name__ == "__main__":
    path = Path(__file__).resolve().parent.parent / "docs" / "eval" / "facts.jsonl"
    qs = questions()
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in qs), encoding="utf-8")
    print(f"wrote {path}: {len(qs)} questions")
