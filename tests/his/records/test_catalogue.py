"""The shipped catalogues: ICD-10 search, the drug seed and its CSV import, interactions."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from flask import Flask

from his.db import get_database
from his.errors import ValidationFailed
from his.records import services
from his.records.catalogue import (
    dose_limits,
    icd10,
    icd10_entries,
    interactions,
    interactions_between,
    parse_drug_csv,
    search_icd10,
    seed_drugs,
)


def test_icd10_subset_is_a_few_hundred_valid_codes() -> None:
    entries = icd10_entries()
    assert len(entries) >= 250
    assert all(e.vi and e.en for e in entries.values())
    assert icd10("i10").vi == "Tăng huyết áp vô căn (nguyên phát)"


@pytest.mark.parametrize("query", ["tăng huyết áp", "tang huyet ap", "TANG HUYET", "I10"])
def test_icd10_found_by_text_with_or_without_diacritics_or_by_code(query: str) -> None:
    assert "I10" in [e.code for e in search_icd10(query)]


def test_icd10_code_prefix_lists_the_chapter_first() -> None:
    codes = [e.code for e in search_icd10("J45")]
    assert codes[0] == "J45.9"
    assert next(e.code for e in search_icd10("đái tháo đường týp 2")).startswith("E11")
    assert search_icd10("   ") == []


def test_seed_catalogue_has_about_a_hundred_drugs_with_antibiotic_ddd() -> None:
    drugs = seed_drugs()
    assert len(drugs) >= 100
    antibiotics = [d for d in drugs.values() if d.antibiotic]
    assert len(antibiotics) >= 25
    assert all(d.atc and d.ddd and d.ddd_unit == "g" for d in antibiotics)
    amoxicillin = drugs["VTS0020"]
    assert amoxicillin.ddd == Decimal("1.5")
    assert amoxicillin.atc == "J01CA04"
    assert drugs["VTS0013"].prescription_type == "N"
    assert drugs["VTS0017"].prescription_type == "H"
    assert amoxicillin.prescription_type == "C"
    assert "penicillin" in amoxicillin.classes


def test_interaction_table_has_at_least_fifty_pairs_naming_known_drugs() -> None:
    rows = interactions()
    assert len(rows) >= 50
    keys = {i.name for d in seed_drugs().values() for i in d.ingredients} | {
        f"class:{c}" for d in seed_drugs().values() for c in d.classes
    }
    unknown = {k for r in rows for k in (r.a, r.b)} - keys
    assert unknown == set()
    assert {r.severity for r in rows} <= {"contraindicated", "major", "moderate"}


def test_interactions_by_ingredient_and_by_class() -> None:
    drugs = seed_drugs()
    warfarin, aspirin, ibuprofen = drugs["VTS0012"], drugs["VTS0010"], drugs["VTS0005"]
    assert interactions_between(warfarin, aspirin)[0].severity == "major"
    assert interactions_between(ibuprofen, warfarin)  # warfarin + class:nsaid
    assert interactions_between(drugs["VTS0001"], drugs["VTS0020"]) == []


def test_dose_limits_cover_common_paediatric_drugs() -> None:
    limits = dose_limits()
    assert {"paracetamol", "ibuprofen", "amoxicillin"} <= set(limits)
    assert limits["paracetamol"].child_mg_per_kg_dose == Decimal(15)


def test_drug_csv_import_reads_a_hospital_catalogue() -> None:
    text = (
        "code,name,ingredients,strength,form,route,unit,price,antibiotic,atc,ddd,ddd_unit,classes\n"
        "VD-1234-19,Amoxicillin 500,amoxicillin 500 mg,500 mg,viên nang,uống,viên,1.200,1,J01CA04,1.5,g,"
        "penicillin;antibiotic\n"
    )
    (drug,) = parse_drug_csv(text)
    assert drug.code == "VD-1234-19"
    assert drug.antibiotic
    assert drug.price == Decimal(1200)
    assert drug.dose_unit == "viên"
    assert drug.dose_units_per_unit == 1


def test_drug_csv_import_names_every_bad_line() -> None:
    text = "code,name,ingredients,unit,price\nA1,Thuốc A,amoxicillin,viên,abc\n,Thuốc B,x 1 mg,viên,1\n"
    with pytest.raises(ValidationFailed) as caught:
        parse_drug_csv(text)
    assert set(caught.value.fields) == {"line 2: ingredients", "line 2: price", "line 3: code"}
    with pytest.raises(ValidationFailed) as caught:
        parse_drug_csv("code,name\nA,B\n")
    assert "ingredients" in caught.value.fields


def test_imported_drugs_extend_and_override_the_seed(app: Flask, tmp_path: Path) -> None:
    path = tmp_path / "thuoc.csv"
    path.write_text(
        "code,name,ingredients,unit,price,antibiotic,atc,ddd,ddd_unit,classes\n"
        "VD-9999-24,Cefuroxim 250 mg,cefuroxime 250 mg,viên,4.500,1,J01DC02,0.5,g,cephalosporin;antibiotic\n"
        "VTS0001,Paracetamol 500 mg (giá mới),paracetamol 500 mg,viên,700,0,N02BE01,,,analgesic\n",
        encoding="utf-8",
    )
    runner = app.test_cli_runner()
    result = runner.invoke(args=["import-drugs", str(path)])
    assert result.exit_code == 0, result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("code,name,ingredients,unit\nX,,sai,viên\n", encoding="utf-8")
    refused = runner.invoke(args=["import-drugs", str(bad)])
    assert refused.exit_code == 1
    assert "line 2: ingredients" in refused.output
    with app.app_context(), get_database(app).session_scope() as session:
        assert {d.code for d in services.search_drugs(session, "cefuroxim")} == {"VTS0029", "VD-9999-24"}
        assert services.get_drug(session, "VTS0001").price == Decimal(700)
        assert len(services.catalogue(session)) == len(seed_drugs()) + 1
        services.withdraw_drug(session, "VTS0005")
        assert services.get_drug(session, "VTS0005") is None
        assert "VTS0005" not in {d.code for d in services.search_drugs(session, "ibuprofen")}
