"""Shipped benchmark split files (tvt/splits) and class-name normalisation (tvt.data.names).

The published counts and per-class sizes below are facts from spec/splits.md, typed in here as an
independent reference for the files shipped with the package.
"""

from __future__ import annotations

import re
from importlib import resources

import numpy as np
import pytest

from tvt.data.names import ALIASES, ClassMatcher, class_key
from tvt.data.splits import PROTOCOLS, load_protocol, protocols_for
from tvt.errors import ConfigError, DataError

# name -> (dataset, all, train, test)
PUBLISHED = {
    "sketchy_no21": ("sketchy", 125, 104, 21),
    "sketchy25_sake": ("sketchy", 125, 100, 25),
    "sketchy25_sempcyc": ("sketchy", 125, 100, 25),
    "tuberlin30_sake": ("tuberlin", 250, 220, 30),
    "tuberlin30_sempcyc": ("tuberlin", 250, 220, 30),
    "quickdraw30": ("quickdraw", 110, 80, 30),
}

# spec/splits.md §6.1: Sketchy sketches / EXTEND photos per class
SKETCHY_COUNTS = (
    "airplane 709/600, alarm_clock 571/600, ant 563/600, ape 617/600, apple 551/600, armor 577/600, "
    "axe 602/600, banana 635/600, bat 635/443, bear 722/600, bee 651/600, beetle 549/600, bell 586/600, "
    "bench 583/600, bicycle 614/600, blimp 667/600, bread 563/600, butterfly 612/600, cabin 546/392, "
    "camel 690/600, candle 538/600, cannon 539/600, car_(sedan) 642/600, castle 608/600, cat 692/600, "
    "chair 669/600, chicken 674/600, church 589/600, couch 652/600, cow 728/600, crab 552/600, "
    "crocodilian 597/600, cup 697/600, deer 568/700, dog 692/600, dolphin 590/613, door 578/600, "
    "duck 724/600, elephant 661/600, eyeglasses 538/600, fan 529/600, fish 530/600, flower 518/600, "
    "frog 608/600, geyser 558/600, giraffe 673/600, guitar 528/600, hamburger 524/600, hammer 631/600, "
    "harp 584/600, hat 529/600, hedgehog 603/600, helicopter 746/750, hermit_crab 559/600, horse 738/696, "
    "hot-air_balloon 619/600, hotdog 634/600, hourglass 534/600, jack-o-lantern 526/600, jellyfish 535/600, "
    "kangaroo 725/600, knife 624/600, lion 697/600, lizard 634/600, lobster 544/700, motorcycle 643/600, "
    "mouse 670/345, mushroom 523/600, owl 657/600, parrot 602/600, pear 575/385, penguin 537/600, "
    "piano 617/600, pickup_truck 698/600, pig 676/600, pineapple 605/600, pistol 552/600, pizza 606/600, "
    "pretzel 652/600, rabbit 668/600, raccoon 735/600, racket 549/600, ray 518/600, rhinoceros 556/663, "
    "rifle 621/600, rocket 600/600, sailboat 659/600, saw 532/600, saxophone 563/600, scissors 558/639, "
    "scorpion 643/600, sea_turtle 566/600, seagull 666/600, seal 565/454, shark 547/600, sheep 669/600, "
    "shoe 546/599, skyscraper 545/161, snail 640/600, snake 629/600, songbird 529/600, spider 620/600, "
    "spoon 535/600, squirrel 688/600, starfish 519/600, strawberry 600/600, swan 586/600, sword 605/276, "
    "table 563/600, tank 606/600, teapot 623/600, teddy_bear 571/600, tiger 743/600, tree 533/495, "
    "trumpet 546/600, turtle 645/600, umbrella 546/600, violin 554/600, volcano 554/600, "
    "wading_bird 521/600, wheelchair 542/278, windmill 598/393, window 554/420, wine_bottle 603/600, "
    "zebra 608/600"
)
# spec/splits.md §7: photos per unseen class, as spelled by each source
TUBERLIN_PHOTOS = {
    "tuberlin30_sake": "ant 424, banana 1194, bottle opener 993, brain 1297, bread 1273, bridge 1005, "
    "bus 437, canoe 409, fan 429, frying-pan 952, horse 504, hot air balloon 1264, laptop 437, "
    "lighter 1154, parachute 952, penguin 567, pizza 647, rollerblades 1135, shoe 1134, snowboard 1063, "
    "space shuttle 836, streetlight 1223, suitcase 682, t-shirt 1111, table 436, teacup 911, "
    "telephone 1095, tractor 1102, trombone 401, windmill 2922",
    "tuberlin30_sempcyc": "backpack 1145, bicycle 168, bookshelf 426, cabinet 400, calculator 2411, "
    "castle 1221, couch 400, dolphin 1292, door_handle 183, duck 1597, eyeglasses 1045, "
    "fire_hydrant 168, flying_saucer 148, foot 93, hedgehog 1215, knife 919, octopus 949, pear 1173, "
    "purse 502, rollerblades 1135, sailboat 980, snail 585, snake 231, snowman 243, swan 444, "
    "tablelamp 1477, traffic_light 1066, truck 2520, umbrella 930, walkie_talkie 642",
}
QUICKDRAW_PHOTOS = (
    "bat 1996, cow 1576, dolphin 1619, door 2084, giraffe 1735, helicopter 1654, mouse 2154, "
    "raccoon 1851, rhinoceros 1817, saw 1791, scissors 1759, skyscraper 1925, tree 1614, windmill 1839, "
    "feather 1576, campfire 1304, palm tree 1626, fire_hydrant 2000, bread 1961, beach 1677, "
    "megaphone 1894, cactus 2043, zebra 1599, tiger 2726, shark 1315, frog 2118, banana 1705, "
    "cake 1709, hamburger 1873, fan 1611"
)
# spec/splits.md §6.3: TU-Berlin-Extended `ImageResized` folder names -> sketch folder names
IMAGERESIZED = (
    "flyingbird:flying bird, spongebob:sponge bob, santaclaus:santa claus, standingbird:standing bird, "
    "parkingmeter:parking meter, personwalking:person walking, walkietalkie:walkie talkie, "
    "floorlamp:floor lamp, firehydrant:fire hydrant, computermonitor:computer monitor, "
    "seaturtle:sea turtle, flowerwithstem:flower with stem, bearanimal:bear (animal), "
    "personsitting:person sitting, bottleopener:bottle opener, racecar:race car, "
    "pickuptruck:pickup truck, baseballbat:baseball bat, pottedplant:potted plant, "
    "poweroutlet:power outlet, alarmclock:alarm clock, cranemachine:crane (machine), "
    "trafficlight:traffic light, hotairballoon:hot air balloon, carsedan:car (sedan), "
    "mouse:mouse (animal), paperclip:paper clip, pipe:pipe (for smoking), spacesshuttle:space shuttle, "
    "satellitedish:satellite dish, palmtree:palm tree, flyingsaucer:flying saucer, cellphone:cell phone, "
    "doorhandle:door handle, humanskeleton:human-skeleton, hotdog:hot-dog, fryingpan:frying-pan, "
    "beermug:beer-mug, speedboat:speed-boat, tshirt:t-shirt, icecreamcone:ice-cream-cone, "
    "winebottle:wine-bottle, computermouse:computer-mouse, wristwatching:wrist-watch, "
    "teddybear:teddy-bear, headphones:head-phones, tennisracket:tennis-racket, tromobone:trombone, "
    "chandeler:chandelier, griaffe:giraffe, diamod:diamond, spidar:spider"
)


def _counts(text: str) -> dict[str, str]:
    return dict(item.rsplit(" ", 1) for item in text.split(", "))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_protocol_files_match_published_counts(name: str) -> None:
    dataset, n_all, n_train, n_test = PUBLISHED[name]
    p = load_protocol(name)
    assert p.dataset == dataset and (p.n_all, p.n_train, p.n_test) == (n_all, n_train, n_test)
    all_c, test, train = p.all_classes, p.test_classes, p.train_classes
    assert (len(all_c), len(train), len(test)) == (n_all, n_train, n_test)
    assert set(test) <= set(all_c) and not set(test) & set(train)
    assert sorted(set(train) | set(test)) == all_c == sorted(all_c)
    for fname in ("all_classes.txt", "test_classes.txt"):
        raw = resources.files("tvt.splits").joinpath(name, fname).read_text(encoding="utf-8")
        lines = raw.splitlines()
        assert raw.endswith("\n") and all(line and line == line.strip() for line in lines)
        assert lines == sorted(lines) and len(set(lines)) == len(lines)


def test_registry_and_unknown_protocol() -> None:
    assert set(PROTOCOLS) == set(PUBLISHED)
    assert [p.name for p in protocols_for("tuberlin")] == ["tuberlin30_sake", "tuberlin30_sempcyc"]
    # protocols of one dataset share the full class list; on-disk split names are distinct
    for dataset in ("sketchy", "tuberlin", "quickdraw"):
        group = protocols_for(dataset)
        assert all(p.all_classes == group[0].all_classes for p in group)
        assert len({p.split for p in group}) == len(group)
    with pytest.raises(ConfigError, match="sketchy_no21"):
        load_protocol("sketchy_21")


def test_cross_split_facts() -> None:
    # spec/splits.md §2: the two variants barely overlap
    s25 = set(load_protocol("sketchy25_sake").test_classes) & set(load_protocol("sketchy25_sempcyc").test_classes)
    assert s25 == {"bell", "squirrel", "tank", "wheelchair"}
    t30 = set(load_protocol("tuberlin30_sake").test_classes) & set(load_protocol("tuberlin30_sempcyc").test_classes)
    assert t30 == {"rollerblades"}
    # §5.1: 14 of the Sketchy-NO unseen classes exist in QuickDraw-Ext, and are unseen there too
    qd = load_protocol("quickdraw30")
    shared = set(load_protocol("sketchy_no21").test_classes) & set(qd.all_classes)
    assert len(shared) == 14 and shared <= set(qd.test_classes)
    assert "palm tree" in qd.test_classes  # the folder spelling, not Doodle2Search's palm_tree


def test_unseen_sizes_from_per_class_counts() -> None:
    sk = {c: tuple(map(int, v.split("/"))) for c, v in _counts(SKETCHY_COUNTS).items()}
    assert set(sk) == set(load_protocol("sketchy_no21").all_classes)
    for name in ("sketchy_no21", "sketchy25_sake", "sketchy25_sempcyc"):
        p = load_protocol(name)
        assert sum(sk[c][0] for c in p.test_classes) == p.unseen_queries
        assert sum(sk[c][1] for c in p.test_classes) == p.unseen_gallery
    for name, text in TUBERLIN_PHOTOS.items():
        p = load_protocol(name)
        photos = _counts(text)
        resolved = {ClassMatcher(p.all_classes, "tuberlin").resolve(c): int(n) for c, n in photos.items()}
        assert set(resolved) == set(p.test_classes) and sum(resolved.values()) == p.unseen_gallery
    qd = load_protocol("quickdraw30")
    photos = _counts(QUICKDRAW_PHOTOS)
    assert set(photos) == set(qd.test_classes) and sum(map(int, photos.values())) == qd.unseen_gallery
    assert 29 * 3001 + 5262 == qd.unseen_queries


def _sempcyc_draw(names: list[str], n_train: int, n_val: int) -> list[str]:
    """SEM-PCYC's seeded class draw (spec/splits.md §3.3, §4.2), re-run with numpy's legacy RNG."""
    rng = np.random.RandomState(0)
    train = rng.choice(names, n_train, replace=False)
    rest = np.setdiff1d(names, train)
    val = rng.choice(rest, n_val, replace=False)
    return sorted(set(val.tolist()) | set(np.setdiff1d(rest, val).tolist()))


def test_sempcyc_lists_equal_the_seeded_draw() -> None:
    sk = load_protocol("sketchy25_sempcyc")
    renamed = sorted(c.replace("hot-air_balloon", "hot_air_balloon").replace("jack-o-lantern", "jack_o_lantern")
                     for c in sk.all_classes)
    drawn = _sempcyc_draw(renamed, 100, 12)
    assert sorted(ClassMatcher(sk.all_classes, "sketchy").resolve(c) for c in drawn) == sk.test_classes
    tu = load_protocol("tuberlin30_sempcyc")
    renamed = sorted(re.sub(r"[ -]", "_", c) for c in tu.all_classes)
    drawn = _sempcyc_draw(renamed, 220, 15)
    assert sorted(ClassMatcher(tu.all_classes, "tuberlin").resolve(c) for c in drawn) == tu.test_classes


def test_class_key() -> None:
    assert class_key("Hot-Air_Balloon") == class_key("hot air balloon") == "hotairballoon"
    assert class_key("car (sedan)") == class_key("car_(sedan)") == "carsedan"
    assert class_key("jack-o'-lantern") == class_key("jack_o_lantern")


@pytest.mark.parametrize("dataset", ["sketchy", "tuberlin", "quickdraw"])
def test_aliases_are_consistent(dataset: str) -> None:
    classes = protocols_for(dataset)[0].all_classes
    keys = {class_key(c): c for c in classes}
    assert len(keys) == len(classes)  # no two classes differ only by separators
    for alias, target in ALIASES[dataset].items():
        assert target in classes and class_key(alias) not in keys
    matcher = ClassMatcher(classes, dataset)
    assert all(matcher.resolve(c) == c for c in classes)
    assert matcher.resolve("no such class") is None


def test_known_spelling_variants_resolve() -> None:
    qd = ClassMatcher(load_protocol("quickdraw30").all_classes, "quickdraw")
    expected = {"crocodile": "crocodilian", "motorbike": "motorcycle", "teddy-bear": "teddy_bear",
                "The Eiffel Tower": "eiffel tower", "palm_tree": "palm tree", "hot air balloon": "hot-air_balloon",
                "alarm clock": "alarm_clock", "wine_bottle": "wine bottle"}
    assert {k: qd.resolve(k) for k in expected} == expected
    tu_classes = load_protocol("tuberlin30_sake").all_classes
    tu = ClassMatcher(tu_classes, "tuberlin")
    for pair in IMAGERESIZED.split(", "):
        folder, name = pair.split(":")
        assert tu.resolve(folder) == name, folder
    # SEM-PCYC renames (spaces and hyphens -> '_') and Doodle2Search's table_lamp
    assert all(tu.resolve(re.sub(r"[ -]", "_", c)) == c for c in tu_classes)
    assert tu.resolve("table_lamp") == "tablelamp" and tu.resolve("motorcycle") == "motorbike"
    sk = ClassMatcher(load_protocol("sketchy_no21").all_classes, "sketchy")
    assert sk.resolve("jack_o_lantern") == "jack-o-lantern" and sk.resolve("crocodile") == "crocodilian"


def test_match_reports_unknown_missing_and_duplicates() -> None:
    m = ClassMatcher(["palm tree", "teddy_bear", "cow"], "quickdraw")
    res = m.match(["palm_tree", "teddy-bear", "zebra"])
    assert res.mapping == {"palm_tree": "palm tree", "teddy-bear": "teddy_bear"}
    assert res.unknown == ["zebra"] and res.missing == ["cow"]
    assert res.renamed == res.mapping
    with pytest.raises(DataError, match="teddy-bear.*teddy_bear|teddy_bear.*teddy-bear"):
        m.match(["teddy_bear", "teddy-bear"])
    with pytest.raises(DataError, match="differ only"):
        ClassMatcher(["a b", "a_b"])
