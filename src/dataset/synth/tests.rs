//! Tests of the synthetic tree: layout and lists, the split fallback, ground-truth values,
//! determinism, that hemorrhages look like hemorrhages, and option checks.

use super::*;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn small(count: usize) -> SynthOptions {
    SynthOptions {
        count,
        seed: 7,
        width: 160,
        height: 128,
    }
}

fn list(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            (rel, fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn layout_is_complete_and_lists_partition_images() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(5);
    write_synthetic(dir.path(), &opts).unwrap();
    let res = dir.path().join("resources");
    let mask = image::open(res.join(MASK_DIR).join("fmask.tif")).unwrap();
    let mask = mask.as_luma8().expect("fmask is 8-bit gray");
    assert_eq!(mask.dimensions(), (160, 128));
    assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    assert_eq!(mask.get_pixel(80, 64).0[0], 255);
    assert_eq!(mask.get_pixel(0, 0).0[0], 0);

    let gt_folders: BTreeSet<String> = fs::read_dir(res.join(GROUNDTRUTH_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = Lesion::ALL.iter().map(|l| l.folder().to_string()).collect();
    assert_eq!(gt_folders, expected);

    let mut all = BTreeSet::new();
    for i in 1..=opts.count {
        let name = format!("{}.png", stem(i));
        let img = image::open(res.join(IMAGES_DIR).join(&name)).unwrap();
        let img = img.as_rgb8().expect("fundus image is RGB");
        assert_eq!(img.dimensions(), (160, 128));
        for l in Lesion::ALL {
            let gt = image::open(res.join(GROUNDTRUTH_DIR).join(l.folder()).join(&name)).unwrap();
            let gt = gt.as_luma8().expect("ground truth is 8-bit gray");
            assert_eq!(gt.dimensions(), (160, 128));
        }
        all.insert(format!("{IMAGES_DIR}/{name}"));
    }
    // No temporary files left behind.
    for (path, _) in files(dir.path()) {
        assert!(
            !path.to_string_lossy().contains(".synth-"),
            "{}",
            path.display()
        );
    }

    let train = list(&res.join("traindatasets/trainset.txt"));
    let test = list(&res.join("testdatasets/testset.txt"));
    assert_eq!(
        train,
        [1, 3, 4].map(|i| format!("{IMAGES_DIR}/{}.png", stem(i)))
    );
    let (train, test): (BTreeSet<_>, BTreeSet<_>) =
        (train.into_iter().collect(), test.into_iter().collect());
    assert!(train.is_disjoint(&test));
    assert_eq!(&train | &test, all);
}

#[test]
fn split_follows_official_list_with_fallback() {
    let (train, test) = split_lists(89);
    assert_eq!(train, OFFICIAL_TRAIN.to_vec());
    assert_eq!(test.len(), 61);
    for count in 2..=12 {
        let (train, test) = split_lists(count);
        assert!(!train.is_empty() && !test.is_empty(), "count {count}");
        assert_eq!(train.len() + test.len(), count);
    }
    assert_eq!(split_lists(2), (vec![1], vec![2]));
    assert_eq!(split_lists(3), (vec![1, 3], vec![2]));
    assert_eq!(split_lists(1), (vec![1], vec![]));
}

#[test]
fn ground_truth_values_are_multiples_of_21() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        count: 6,
        seed: 3,
        width: 300,
        height: 230,
    };
    write_synthetic(dir.path(), &opts).unwrap();
    let gt = dir.path().join("resources").join(GROUNDTRUTH_DIR);
    let mut seen = [false; 4];
    for i in 1..=opts.count {
        for (k, l) in Lesion::ALL.iter().enumerate() {
            let map = image::open(gt.join(l.folder()).join(format!("{}.png", stem(i))))
                .unwrap()
                .into_luma8();
            for p in map.pixels() {
                assert_eq!(p.0[0] % 21, 0, "{} {}", l.folder(), p.0[0]);
                assert!(p.0[0] <= 252);
            }
            seen[k] |= map.pixels().any(|p| p.0[0] >= 189);
        }
    }
    assert!(seen[0], "some hemorrhage core in 6 images");
}

#[test]
fn same_options_give_identical_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let opts = small(4);
    write_synthetic(a.path(), &opts).unwrap();
    write_synthetic(b.path(), &opts).unwrap();
    let (fa, fb) = (files(a.path()), files(b.path()));
    assert_eq!(fa.len(), 1 + 2 + 4 * 5);
    assert!(fa == fb, "two runs differ");
    // Another seed gives other pictures.
    let c = tempfile::tempdir().unwrap();
    write_synthetic(c.path(), &SynthOptions { seed: 8, ..opts }).unwrap();
    let img = |root: &Path| {
        fs::read(root.join("resources").join(IMAGES_DIR).join("image001.png")).unwrap()
    };
    assert_ne!(img(a.path()), img(c.path()));
}

/// Learnability sanity check: hemorrhage cores (>= 189) are darker and redder than the rest of
/// the field of view, and the images hold hemorrhages at all.
#[test]
fn hemorrhage_cores_are_dark_red() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        count: 8,
        seed: 11,
        width: 375,
        height: 288,
    };
    write_synthetic(dir.path(), &opts).unwrap();
    let res = dir.path().join("resources");
    let mask = image::open(res.join(MASK_DIR).join("fmask.tif"))
        .unwrap()
        .into_luma8();
    let (mut les, mut bg) = ([0f64; 3], [0f64; 3]);
    let (mut n_les, mut n_bg) = (0f64, 0f64);
    let mut with_hem = 0;
    for i in 1..=opts.count {
        let name = format!("{}.png", stem(i));
        let img = image::open(res.join(IMAGES_DIR).join(&name))
            .unwrap()
            .into_rgb8();
        let maps: Vec<_> = Lesion::ALL
            .iter()
            .map(|l| {
                image::open(res.join(GROUNDTRUTH_DIR).join(l.folder()).join(&name))
                    .unwrap()
                    .into_luma8()
            })
            .collect();
        let mut any = false;
        for (x, y, p) in img.enumerate_pixels() {
            if mask.get_pixel(x, y).0[0] == 0 {
                continue;
            }
            let v: Vec<u8> = maps.iter().map(|m| m.get_pixel(x, y).0[0]).collect();
            if v[0] >= 189 {
                any = true;
                n_les += 1.0;
                for (sum, &c) in les.iter_mut().zip(&p.0) {
                    *sum += c as f64;
                }
            } else if v.iter().all(|&v| v == 0) {
                n_bg += 1.0;
                for (sum, &c) in bg.iter_mut().zip(&p.0) {
                    *sum += c as f64;
                }
            }
        }
        with_hem += any as usize;
    }
    assert!(
        with_hem >= 5,
        "only {with_hem} of 8 images have hemorrhage cores"
    );
    let les = les.map(|s| s / n_les);
    let bg = bg.map(|s| s / n_bg);
    assert!(
        les.iter().sum::<f64>() < 0.75 * bg.iter().sum::<f64>(),
        "{les:?} vs {bg:?}"
    );
    assert!(les[1] < 0.6 * bg[1], "green: {les:?} vs {bg:?}");
    assert!(les[0] > les[1] && les[0] > les[2], "still red: {les:?}");
}

#[test]
fn tiny_sizes_work_and_bad_options_fail() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h) in [(32, 32), (64, 48), (160, 128)] {
        let opts = SynthOptions {
            count: 3,
            seed: 2,
            width: w,
            height: h,
        };
        write_synthetic(&dir.path().join(format!("{w}x{h}")), &opts).unwrap();
    }
    let opts = SynthOptions {
        width: 16,
        ..small(1)
    };
    assert!(write_synthetic(dir.path(), &opts).is_err());
    assert!(write_synthetic(dir.path(), &small(0)).is_err());
}
