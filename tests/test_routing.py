"""Routing rules match series attributes and produce (route, pipeline, series) decisions."""

from node.config import MatchConfig, RouteConfig
from node.routing import Router, SeriesFacts, series_matches

DSC = SeriesFacts("1.1", modality="MR", series_description="ep2d_perf DSC", body_part="HEAD",
                  image_type="ORIGINAL\\PRIMARY\\M\\MOSAIC", calling_ae="SCANNER1",
                  temporal_positions=50, instance_count=50)
T2 = SeriesFacts("1.2", modality="MR", series_description="t2_tse_tra", body_part="HEAD",
                 image_type="ORIGINAL\\PRIMARY\\M", calling_ae="SCANNER1", temporal_positions=1,
                 instance_count=24)
CT = SeriesFacts("2.1", modality="CT", series_description="Abdomen PV", body_part="ABDOMEN",
                 calling_ae="CT1", instance_count=300)


def test_each_condition_filters():
    assert series_matches(MatchConfig(Modality="mr"), DSC)
    assert not series_matches(MatchConfig(Modality="CT"), DSC)
    assert series_matches(MatchConfig(Modality=["CT", "MR"]), DSC)
    assert series_matches(MatchConfig(SeriesDescription=r"(?i)perf|dsc"), DSC)
    assert not series_matches(MatchConfig(SeriesDescription=r"(?i)perf|dsc"), T2)
    assert series_matches(MatchConfig(BodyPartExamined="HEAD"), T2)
    assert not series_matches(MatchConfig(BodyPartExamined="HEAD"), CT)
    assert series_matches(MatchConfig(ImageType="MOSAIC"), DSC)
    assert not series_matches(MatchConfig(ImageType="MOSAIC"), T2)
    assert series_matches(MatchConfig(calling_ae_title="SCANNER1"), DSC)
    assert not series_matches(MatchConfig(calling_ae_title=["OTHER"]), DSC)
    assert series_matches(MatchConfig(min_temporal_positions=10), DSC)
    assert not series_matches(MatchConfig(min_temporal_positions=10), T2)
    assert not series_matches(MatchConfig(min_instances=100), T2)
    assert not series_matches(MatchConfig(SeriesDescription="x"), SeriesFacts("9"))


def test_series_level_route_gets_only_matching_series():
    route = RouteConfig(name="perf", level="series", pipelines=["inventory"],
                        match=MatchConfig(Modality="MR", min_temporal_positions=10))
    [decision] = Router([route]).decide([DSC, T2])
    assert decision.series_uids == ("1.1",)
    assert decision.route == "perf"


def test_study_level_route_gets_the_whole_study():
    route = RouteConfig(name="all", level="study", pipelines=["a", "b"],
                        match=MatchConfig(SeriesDescription="perf"), options={"method": "osvd"})
    decisions = Router([route], {"a": {"method": "csvd", "extra": 1}}).decide([DSC, T2])
    assert [d.pipeline for d in decisions] == ["a", "b"]
    assert decisions[0].series_uids == ("1.1", "1.2")
    # Route options override the pipeline's defaults.
    assert decisions[0].options == {"method": "osvd", "extra": 1}


def test_no_match_no_decision():
    route = RouteConfig(name="ct", pipelines=["inventory"], match=MatchConfig(Modality="CT"))
    assert Router([route]).decide([DSC, T2]) == []
