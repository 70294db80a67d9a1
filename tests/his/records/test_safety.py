"""Local safety checks: allergy, interactions, duplicate therapy and weight-based doses."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from his.records.catalogue import seed_drugs
from his.records.dosing import PatientFacts, parse_dosage
from his.records.safety import Allergy, PlannedItem, check_prescription, missing_overrides

DRUGS = seed_drugs()
TODAY = date(2026, 11, 23)
ADULT = PatientFacts(birth_date=date(1970, 1, 1), weight_kg=Decimal(60))


def item(code: str, dosage: str = "sáng 1 viên, chiều 1 viên") -> PlannedItem:
    return PlannedItem(DRUGS[code], parse_dosage(dosage))


def kinds(warnings: list) -> list[tuple[str, str]]:
    return [(w.kind, w.severity) for w in warnings]


def test_a_safe_prescription_has_no_warning() -> None:
    assert check_prescription([item("VTS0001"), item("VTS0020")], ADULT, on=TODAY) == []


def test_allergy_by_ingredient() -> None:
    warnings = check_prescription(
        [item("VTS0022")], ADULT, allergies=[Allergy("amoxicillin", "Amoxicilin")], on=TODAY
    )
    assert kinds(warnings) == [("allergy", "high")]
    assert "allergic to Amoxicilin" in warnings[0].render()


def test_allergy_by_class_catches_every_penicillin() -> None:
    allergy = [Allergy("class:penicillin", "Penicillin")]
    for code in ("VTS0020", "VTS0022", "VTS0025"):
        assert kinds(check_prescription([item(code)], ADULT, allergies=allergy, on=TODAY)) == [
            ("allergy", "high")
        ]
    assert check_prescription([item("VTS0035", "sáng 1 viên")], ADULT, allergies=allergy, on=TODAY) == []


def test_interaction_between_two_prescribed_drugs_names_both_and_advises() -> None:
    (warning,) = check_prescription(
        [item("VTS0012", "tối 1 viên"), item("VTS0010", "sáng 1 viên")], ADULT, on=TODAY
    )
    assert warning.kind == "interaction"
    assert warning.severity == "major"
    assert warning.drugs == ("VTS0010", "VTS0012")
    assert "Warfarin 2 mg" in warning.render()
    assert "chảy máu" in warning.render()
    assert warning.advice
    (english,) = check_prescription(
        [item("VTS0012", "tối 1 viên"), item("VTS0010", "sáng 1 viên")], ADULT, on=TODAY, locale="en"
    )
    assert "bleeding" in english.render()


def test_interaction_with_a_drug_the_patient_already_takes() -> None:
    warnings = check_prescription([item("VTS0037")], ADULT, current=[DRUGS["VTS0091"]], on=TODAY)
    assert kinds(warnings) == [("interaction", "contraindicated")]


def test_duplicate_therapy_by_ingredient_and_by_group() -> None:
    same_ingredient = check_prescription(
        [item("VTS0001", "sáng 1 viên"), item("VTS0002", "tối 1 gói")], ADULT, on=TODAY
    )
    assert kinds(same_ingredient) == [("duplicate", "moderate")]
    assert "paracetamol" in same_ingredient[0].render()
    two_ppis = check_prescription([item("VTS0055"), item("VTS0057")], ADULT, on=TODAY)
    assert kinds(two_ppis) == [("duplicate", "moderate")]


def test_adult_dose_above_the_maximum() -> None:
    warnings = check_prescription([item("VTS0001", "ngày 4 lần, mỗi lần 3 viên")], ADULT, on=TODAY)
    assert [w.key for w in warnings] == ["dose:VTS0001:paracetamol:single", "dose:paracetamol:day"]
    assert "6000 mg per day exceeds the maximum of 4000 mg" in warnings[1].render()


def test_child_dose_is_checked_by_weight() -> None:
    child = PatientFacts(birth_date=date(2023, 1, 1), weight_kg=Decimal(12), guardian_name="Mẹ")
    ok = check_prescription([item("VTS0003", "ngày 3 lần, mỗi lần 7 ml")], child, on=TODAY)  # 168 mg ≤ 180
    assert ok == []
    high = check_prescription([item("VTS0003", "ngày 4 lần, mỗi lần 10 ml")], child, on=TODAY)
    assert [w.key for w in high] == ["dose:VTS0003:paracetamol:single", "dose:paracetamol:day"]
    assert "240 mg per dose exceeds the maximum of 180 mg" in high[0].render()
    assert "960 mg per day exceeds the maximum of 720 mg" in high[1].render()


def test_amoxicillin_in_a_combination_counts_toward_the_daily_maximum() -> None:
    child = PatientFacts(birth_date=date(2022, 1, 1), weight_kg=Decimal(10), guardian_name="Bố")
    warnings = check_prescription(
        [item("VTS0021", "sáng 2 gói, tối 2 gói"), item("VTS0023", "sáng 1 gói, tối 1 gói")], child, on=TODAY
    )
    assert "dose:amoxicillin:day" in [w.key for w in warnings]
    assert "duplicate" in [w.kind for w in warnings]


def test_override_needs_a_reason_for_every_warning() -> None:
    warnings = check_prescription(
        [item("VTS0012", "tối 1 viên"), item("VTS0010", "sáng 1 viên")], ADULT, on=TODAY
    )
    assert missing_overrides(warnings, {}) == warnings
    assert missing_overrides(warnings, {warnings[0].key: "  "}) == warnings
    assert missing_overrides(warnings, {warnings[0].key: "Rung nhĩ, đã theo dõi INR"}) == []
