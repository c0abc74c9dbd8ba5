"""Labeled text generated offline for the demo models: NER sentences and topic documents.

Sentence templates written for this project are filled from name, company and place
lists (Faker's locales give many cultures' names). Templates are split once: training
never sees the held-out templates, so test scores measure sentences of new shapes.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NER_TYPES = ["PER", "ORG", "LOC", "MISC"]
NER_LABELS = ["O"] + [f"{p}-{t}" for t in NER_TYPES for p in ("B", "I")]
TOPICS = ["world", "sports", "business", "sci_tech"]

NAME_LOCALES = [
    "en_US",
    "en_GB",
    "de_DE",
    "fr_FR",
    "es_ES",
    "it_IT",
    "pt_BR",
    "nl_NL",
    "pl_PL",
    "tr_TR",
    "sv_SE",
    "en_IN",
    "es_MX",
    "fi_FI",
    "cs_CZ",
    "ro_RO",
    "hu_HU",
    "da_DK",
    "no_NO",
    "id_ID",
]
WELL_KNOWN_PEOPLE = [
    "Angela Merkel",
    "Tim Cook",
    "Lionel Messi",
    "Serena Williams",
    "Narendra Modi",
    "Emmanuel Macron",
    "Ngozi Okonjo-Iweala",
    "Satya Nadella",
    "Cristiano Ronaldo",
    "Jacinda Ardern",
    "Elon Musk",
    "Taylor Swift",
    "Olaf Scholz",
    "Christine Lagarde",
    "Naomi Osaka",
    "Usain Bolt",
    "Greta Thunberg",
    "Sundar Pichai",
    "Ursula von der Leyen",
    "Kylian Mbappé",
    "Luiz Inácio Lula da Silva",
    "Cyril Ramaphosa",
    "Mary Barra",
]
WELL_KNOWN_ORGS = [
    "Siemens",
    "Apple",
    "Toyota",
    "Reuters",
    "Microsoft",
    "Google",
    "Amazon",
    "Volkswagen",
    "Samsung",
    "Nestlé",
    "Unilever",
    "Airbus",
    "Boeing",
    "World Bank",
    "United Nations",
    "NASA",
    "FIFA",
    "European Central Bank",
    "Deutsche Bank",
    "Tata Motors",
    "Alibaba",
    "Shell",
    "BP",
    "Pfizer",
    "BioNTech",
    "Spotify",
    "Nokia",
    "Ericsson",
    "Renault",
    "Real Madrid",
    "Manchester United",
    "Bayern Munich",
    "International Monetary Fund",
    "Greenpeace",
    "OpenAI",
    "Intel",
    "Nvidia",
    "Sony",
    "Aramco",
]
WELL_KNOWN_PLACES = [
    "Berlin",
    "Paris",
    "Tokyo",
    "Lagos",
    "São Paulo",
    "Zürich",
    "Munich",
    "New York",
    "London",
    "Nairobi",
    "Jakarta",
    "Mumbai",
    "Brussels",
    "Geneva",
    "Beijing",
    "Seoul",
    "Cairo",
    "Mexico City",
    "Toronto",
    "Sydney",
    "Germany",
    "France",
    "Japan",
    "Nigeria",
    "Brazil",
    "India",
    "Kenya",
    "Canada",
    "Australia",
    "Italy",
    "Spain",
    "Poland",
    "Turkey",
    "Indonesia",
    "South Africa",
    "United States",
    "Europe",
    "Asia",
    "Africa",
    "Istanbul",
    "Kraków",
    "Reykjavík",
    "Ōsaka",
    "Bogotá",
    "Montréal",
    "Ho Chi Minh City",
]
MISC = [
    "German",
    "French",
    "Japanese",
    "Nigerian",
    "Brazilian",
    "Indian",
    "European",
    "Olympics",
    "World Cup",
    "Nobel Prize",
    "Champions League",
    "Tour de France",
    "Wimbledon",
    "Christmas",
    "Ramadan",
    "English",
    "Spanish",
    "Mandarin",
    "Swahili",
    "Diwali",
    "Oscars",
    "Grammy",
    "Bundesliga",
    "Euro",
]

# {PER} {ORG} {LOC} {MISC} are entities; other slots are plain words.
NER_TEMPLATES = [
    "{PER} met {PER} in {LOC} on Monday.",
    "{PER}, the chief executive of {ORG}, said the company would open a new office in {LOC}.",
    "Shares of {ORG} rose 3 percent after {PER} announced a deal with {ORG}.",
    "{ORG} has hired {PER} as its new chief financial officer.",
    "The {MISC} delegation arrived in {LOC} late on Tuesday.",
    "{PER} was born in {LOC} and moved to {LOC} as a child.",
    "Officials in {LOC} said {ORG} would pay a fine.",
    "According to {ORG}, the {MISC} market grew faster than expected.",
    "{PER} told {ORG} that the talks in {LOC} had failed.",
    "In {LOC}, thousands of people gathered to celebrate {MISC}.",
    "{PER} won the {MISC} after beating {PER} in the final.",
    "A spokesperson for {ORG} declined to comment.",
    "{ORG} and {ORG} agreed to merge, creating the largest firm in {LOC}.",
    "The meeting between {PER} and {PER} took place at the headquarters of {ORG}.",
    "{PER} is expected to visit {LOC} next week.",
    "Police in {LOC} arrested two men on Friday.",
    "{PER}, who speaks fluent {MISC}, joined {ORG} in 2019.",
    "Investors welcomed the news that {ORG} will build a factory near {LOC}.",
    "The weather was cold and wet for most of the week.",
    "Nobody expected the results to arrive so quickly.",
    "{PER} said she was proud of the team.",
    "Flights from {LOC} to {LOC} were cancelled because of the storm.",
    "Critics say {ORG} has not done enough to reduce emissions in {LOC}.",
    "{PER} thanked fans in {LOC} after the concert.",
    "The report by {ORG} was published on Wednesday.",
    "{PER} and {PER} founded {ORG} in a garage in {LOC}.",
    "Prices rose sharply across {LOC} last month.",
    "{PER} will lead the {MISC} team at the tournament in {LOC}.",
    "Engineers at {ORG} in {LOC} are testing the new design.",
    "The minister, {PER}, resigned after the scandal.",
    "Talks between {LOC} and {LOC} resumed in {LOC}.",
    "{ORG} fired {PER} after a review of the accounts.",
    "She moved to {LOC} to work for {ORG}.",
    "Fans of {ORG} celebrated in the streets of {LOC}.",
    "{PER} criticised {ORG} in an interview with {ORG}.",
    "The {MISC} film won two awards in {LOC}.",
    "Local farmers said the harvest was the worst in a decade.",
    "{PER} has been appointed ambassador to {LOC}.",
    "Yesterday {PER} visited the {ORG} plant outside {LOC}.",
    "Representatives of {ORG} flew to {LOC} to meet {PER}.",
    "{LOC} and {LOC} will host the next round of talks.",
    "{LOC} beat {LOC} 2-0 in a friendly match.",
    "Shares in {ORG} slipped in early trading.",
    "{ORG} posted a loss for the third quarter.",
    "The mayor of {LOC}, {PER}, opened the new library.",
    "Heavy rain flooded the old town of {LOC} overnight.",
    "{PER}, a teacher from {LOC}, wrote a book about {MISC} cooking.",
    "A new bridge over the river was opened on Saturday.",
    "{PER} left {ORG} and returned to {LOC}.",
    "Tourists from {LOC} crowded the beaches this summer.",
    "The small museum near {LOC} attracts few visitors.",
    "{ORG} shares closed higher in {LOC} on Thursday.",
]

TOPIC_VOCAB = {
    "world": {
        "event": [
            "election",
            "ceasefire",
            "summit",
            "protest",
            "referendum",
            "peace talks",
            "state visit",
            "border dispute",
            "humanitarian crisis",
            "coalition talks",
        ],
        "actor": [
            "the government",
            "the prime minister",
            "the president",
            "opposition leaders",
            "rebels",
            "diplomats",
            "the foreign minister",
            "parliament",
            "aid agencies",
            "the army",
        ],
        "verb": ["condemned", "announced", "rejected", "called for", "postponed", "welcomed", "demanded"],
    },
    "sports": {
        "event": [
            "match",
            "final",
            "derby",
            "semi-final",
            "race",
            "tournament",
            "grand prix",
            "title fight",
            "qualifier",
            "season opener",
        ],
        "actor": [
            "the striker",
            "the goalkeeper",
            "the coach",
            "the captain",
            "the defending champion",
            "the midfielder",
            "the sprinter",
            "the home side",
            "the visitors",
            "the referee",
        ],
        "verb": ["scored", "won", "lost", "equalised", "defended", "clinched", "was sent off in"],
    },
    "business": {
        "event": [
            "quarterly earnings",
            "merger",
            "share buyback",
            "profit warning",
            "initial public offering",
            "acquisition",
            "layoffs",
            "dividend",
            "annual results",
            "bond sale",
        ],
        "actor": [
            "investors",
            "analysts",
            "shareholders",
            "the board",
            "the chief executive",
            "the central bank",
            "traders",
            "the regulator",
            "creditors",
            "the company",
        ],
        "verb": ["reported", "forecast", "cut", "raised", "approved", "rejected", "announced"],
    },
    "sci_tech": {
        "event": [
            "software update",
            "space mission",
            "clinical trial",
            "chip",
            "smartphone",
            "data breach",
            "quantum computer",
            "vaccine study",
            "satellite launch",
            "AI model",
        ],
        "actor": [
            "researchers",
            "scientists",
            "engineers",
            "astronomers",
            "the developers",
            "security experts",
            "the lab",
            "physicists",
            "programmers",
            "the startup",
        ],
        "verb": ["unveiled", "discovered", "published", "tested", "patched", "launched", "released"],
    },
}
TOPIC_TEMPLATES = {
    "world": [
        "{actor} {verb} the {event} in {LOC} on Sunday.",
        "After the {event}, {PER} said the country needed unity.",
        "Thousands marched in {LOC} as {actor} {verb} the {event}.",
        "The United Nations urged calm after the {event} near the border.",
        "{PER} arrived in {LOC} for the {event} with regional leaders.",
        "Voters in {LOC} went to the polls in a closely watched {event}.",
        "{actor} {verb} new sanctions after the {event}.",
        "Refugees crossed into {LOC} as fighting continued.",
        "The embassy in {LOC} was closed during the {event}.",
        "{actor} said the {event} would be held next spring.",
        "Ministers from {LOC} and {LOC} signed a treaty on Friday.",
        "The {event} in {LOC} ended without agreement.",
    ],
    "sports": [
        "{actor} {verb} twice as {ORG} beat {ORG} 3-1 in the {event}.",
        "{PER} {verb} the {event} in {LOC} in record time.",
        "{ORG} sacked their coach after losing the {event}.",
        "The {event} went to extra time before {PER} scored the winner.",
        "{PER} will miss the {event} with a knee injury.",
        "{actor} praised the fans after the {event} in {LOC}.",
        "{ORG} signed {PER} on a four-year contract.",
        "A late penalty decided the {event} at the stadium in {LOC}.",
        "{PER} retained the title after a dramatic {event}.",
        "The {event} was postponed because of heavy rain.",
        "{actor} {verb} the {event} after a nervy second half.",
        "{PER} broke the world record at the {event}.",
    ],
    "business": [
        "{ORG} {verb} {event} above analysts' expectations.",
        "Shares of {ORG} fell 5 percent after the {event}.",
        "{actor} {verb} the {event} at {ORG} on Tuesday.",
        "{ORG} plans an {event} in {LOC} next year.",
        "{PER}, chief executive of {ORG}, {verb} the {event}.",
        "Oil prices rose as {actor} {verb} the outlook.",
        "The {event} valued {ORG} at 12 billion dollars.",
        "{ORG} will cut 2,000 jobs after weak {event}.",
        "Inflation slowed in {LOC}, and {actor} {verb} interest rates.",
        "{actor} expect the {event} to lift revenue this quarter.",
        "{ORG} agreed to buy {ORG} in a cash and stock deal.",
        "Markets in {LOC} closed lower after the {event}.",
    ],
    "sci_tech": [
        "{actor} at {ORG} {verb} a new {event}.",
        "{ORG} {verb} a {event} that fixes a serious flaw.",
        "The {event} could help doctors detect cancer earlier, {actor} said.",
        "{PER} presented the {event} at a conference in {LOC}.",
        "A {event} exposed the passwords of millions of users.",
        "{actor} {verb} results of the {event} in a leading journal.",
        "The {event} will study the atmosphere of a distant planet.",
        "{ORG} said its {event} uses half the energy of the previous model.",
        "{actor} in {LOC} {verb} a faster {event}.",
        "Hackers targeted the {event} of {ORG} last week.",
        "{PER} leads the team building the {event}.",
        "The {event} relies on machine learning to translate speech.",
    ],
}


# The second demo classifier (examples/multi.yaml): the tone of a news sentence. Entity slots
# take the same names and places as the topic documents; word slots swap the words that carry
# the tone, so the model learns the words, not the sentence shapes.
SENTIMENTS = ["negative", "neutral", "positive"]
SENTIMENT_VOCAB = {
    "negative": {
        "adj": ["weak", "poor", "disappointing", "dismal", "terrible", "awful", "worrying"],
        "move": ["fell", "slumped", "plunged", "dropped", "tumbled", "sank"],
        "judge": ["criticised", "condemned", "slammed", "attacked", "blamed"],
        "event": ["failure", "disaster", "crisis", "scandal", "collapse", "setback", "loss"],
    },
    "neutral": {
        "adj": ["quarterly", "annual", "regular", "scheduled", "new", "final"],
        "move": ["was unchanged", "held steady", "was flat", "stayed level"],
        "judge": ["discussed", "reviewed", "described", "announced", "mentioned"],
        "event": ["meeting", "report", "statement", "visit", "conference", "review"],
    },
    "positive": {
        "adj": ["record", "strong", "excellent", "impressive", "remarkable", "brilliant", "healthy"],
        "move": ["rose", "jumped", "soared", "climbed", "surged", "rallied"],
        "judge": ["praised", "celebrated", "welcomed", "applauded", "hailed"],
        "event": ["success", "triumph", "breakthrough", "victory", "recovery", "win"],
    },
}
SENTIMENT_TEMPLATES = {
    "negative": [
        "Shares of {ORG} {move} after {adj} results.",
        "{ORG} will cut 2,000 jobs after a {adj} year.",
        "{PER} will miss the final with a serious injury.",
        "Fighting in {LOC} killed dozens of civilians.",
        "A data breach at {ORG} exposed the passwords of millions of users.",
        "{ORG} sacked their coach after a humiliating defeat.",
        "Critics {judge} {ORG} for the {event} of its new product.",
        "Floods destroyed hundreds of homes in {LOC}.",
        "{PER} was arrested on charges of fraud.",
        "Prices soared and families in {LOC} struggled to pay for food.",
        "The {event} at {ORG} left thousands of customers angry.",
        "{PER} called the season a {event}.",
        "Sales at {ORG} were {adj} and profits {move}.",
        "The company reported a {adj} {event} and warned of more job losses.",
        "Investors fear a {event} as exports from {LOC} {move}.",
        "{PER} {judge} the {adj} response to the {event}.",
    ],
    "neutral": [
        "{PER} arrived in {LOC} on Tuesday.",
        "{ORG} will publish its {adj} {event} next week.",
        "The {event} in {LOC} is scheduled for Friday.",
        "{PER} is the chief executive of {ORG}.",
        "The {event} will take place in {LOC} in May.",
        "{ORG} said the study will run for three years.",
        "Ministers from {LOC} and {LOC} met to discuss trade.",
        "The election will be held next spring.",
        "{PER} gave a speech at the university in {LOC}.",
        "The satellite will study the atmosphere of a distant planet.",
        "{ORG} moved its headquarters to {LOC}.",
        "The company {judge} its plans in a {adj} {event}.",
        "Trading in shares of {ORG} {move} on Monday.",
        "{PER} {judge} the {adj} {event} with reporters.",
        "{ORG} employs about 4,000 people in {LOC}.",
        "The committee will meet again in {LOC} next month.",
    ],
    "positive": [
        "{ORG} reported {adj} profits and raised its forecast.",
        "Fans celebrated in {LOC} after {ORG} won the final.",
        "{PER} {judge} the {adj} work of the rescue teams.",
        "Shares of {ORG} {move} after {adj} results.",
        "The new treatment helped thousands of patients recover.",
        "{PER} won the title after a {adj} performance.",
        "Investors {judge} the deal between {ORG} and {ORG}.",
        "The peace agreement in {LOC} was {judge} as a historic {event}.",
        "{ORG} will hire 3,000 workers in {LOC}.",
        "Scientists at {ORG} made a {adj} {event}.",
        "Crowds cheered as {PER} opened the new hospital in {LOC}.",
        "The festival in {LOC} was a {adj} {event}.",
        "{PER} thanked the volunteers for their generous help.",
        "Exports from {LOC} {move}, lifting hopes of a {event}.",
        "The company reported a {adj} year and a {event} for its new product.",
        "Sales at {ORG} were {adj} and profits {move}.",
    ],
}


@dataclass(frozen=True)
class NerExample:
    text: str
    spans: tuple[tuple[int, int, str], ...]  # (start, end, type), end exclusive


def split_templates(templates: list[str], held_out: float, seed: int) -> tuple[list[str], list[str]]:
    """A fixed split: the held-out templates never appear in training."""
    order = list(templates)
    random.Random(seed).shuffle(order)
    n_test = max(1, int(len(order) * held_out))
    return order[n_test:], order[:n_test]


ORG_SUFFIXES = [
    "Group",
    "Holdings",
    "Inc.",
    "GmbH",
    "AG",
    "S.A.",
    "Ltd",
    "Bank",
    "Motors",
    "Airlines",
    "Energy",
    "Labs",
    "Systems",
    "Pharma",
    "Foods",
    "Media",
    "Capital",
    "Technologies",
    "Insurance",
    "Steel",
    "Telecom",
    "Logistics",
    "University",
    "Institute",
    "Football Club",
]


class Fillers:
    """Entity and vocabulary pools, deterministic for a seed.

    People are first + last names from many Faker locales; organisations are surnames or
    places with an unmistakable suffix ("Okafor Holdings", "Lyon Steel"), so a company is
    never just a list of surnames that no reader could tell from people.
    """

    def __init__(self, seed: int = 0, per_locale: int = 60) -> None:
        from faker import Faker

        self.rng = random.Random(seed)
        people, orgs, places = list(WELL_KNOWN_PEOPLE), list(WELL_KNOWN_ORGS), list(WELL_KNOWN_PLACES)
        for i, loc in enumerate(NAME_LOCALES):
            fake = Faker(loc)
            fake.seed_instance(seed * 1000 + i)
            for _ in range(per_locale):
                people.append(f"{fake.first_name()} {fake.last_name()}")
                if self.rng.random() < 0.3:
                    people.append(fake.last_name())  # people are often named by surname alone
            for _ in range(per_locale // 3):
                stem = fake.last_name() if self.rng.random() < 0.6 else fake.city()
                orgs.append(f"{stem} {self.rng.choice(ORG_SUFFIXES)}")
                places.append(fake.city())
        self.pools = {"PER": people, "ORG": orgs, "LOC": places, "MISC": list(MISC)}

    def entity(self, kind: str) -> str:
        return self.rng.choice(self.pools[kind])


_SLOT = re.compile(r"\{(\w+)\}")


def fill(template: str, fillers: Fillers, vocab: dict[str, list[str]] | None = None) -> NerExample:
    """Fill a template; entity slots are recorded as character spans."""
    out: list[str] = []
    spans: list[tuple[int, int, str]] = []
    pos = 0
    length = 0
    for m in _SLOT.finditer(template):
        literal = template[pos : m.start()]
        out.append(literal)
        length += len(literal)
        slot = m.group(1)
        if slot in NER_TYPES:
            value = fillers.entity(slot)
            spans.append((length, length + len(value), slot))
        else:
            value = fillers.rng.choice((vocab or {})[slot])
        out.append(value)
        length += len(value)
        pos = m.end()
    out.append(template[pos:])
    text = "".join(out)
    return NerExample(text[0].upper() + text[1:], tuple(spans))


def ner_examples(templates: list[str], n: int, fillers: Fillers) -> list[NerExample]:
    examples = []
    for _ in range(n):
        first = fill(fillers.rng.choice(templates), fillers)
        if fillers.rng.random() < 0.3:  # two sentences: entities at other positions
            second = fill(fillers.rng.choice(templates), fillers)
            shift = len(first.text) + 1
            first = NerExample(
                first.text + " " + second.text,
                first.spans + tuple((a + shift, b + shift, t) for a, b, t in second.spans),
            )
        examples.append(first)
    return examples


def topic_examples(templates: dict[str, list[str]], n: int, fillers: Fillers) -> list[tuple[NerExample, int]]:
    """Topic documents of 1-3 sentences; their entity spans are known too (extra NER data)."""
    docs = []
    for _ in range(n):
        label = fillers.rng.randrange(len(TOPICS))
        topic = TOPICS[label]
        parts = [
            fill(fillers.rng.choice(templates[topic]), fillers, TOPIC_VOCAB[topic])
            for _ in range(fillers.rng.choice([1, 1, 2, 3]))
        ]
        text, spans, shift = "", [], 0
        for part in parts:
            if text:
                text += " "
                shift = len(text)
            text += part.text
            spans += [(a + shift, b + shift, t) for a, b, t in part.spans]
        docs.append((NerExample(text, tuple(spans)), label))
    return docs


def labeled_examples(
    templates: dict[str, list[str]],
    vocab: dict[str, dict[str, list[str]]],
    labels: list[str],
    n: int,
    fillers: Fillers,
) -> list[tuple[NerExample, int]]:
    """Single-sentence documents from labeled templates (the sentiment demo classifier)."""
    docs = []
    for _ in range(n):
        label = fillers.rng.randrange(len(labels))
        name = labels[label]
        docs.append((fill(fillers.rng.choice(templates[name]), fillers, vocab[name]), label))
    return docs
