use super::*;

fn values(n: usize, seed: u64) -> Vec<f64> {
    (0..n).map(|i| (((i as u64 * 2654435761 + seed * 40503) % 1000) as f64 - 500.0) / 250.0).collect()
}

fn check_isa<A>(isa: CpuIsa, ks: Kernels<A>)
where
    A: Copy + 'static + crate::element::Accumulator,
{
    let (mr, nr) = (ks.nn_rows, ks.nn_cols);
    let tol = if std::mem::size_of::<A>() == 4 { 1e-4 } else { 1e-12 };
    let close = |got: A, want: f64, what: &str| {
        assert!((got.to_f64() - want).abs() <= tol * (1.0 + want.abs()), "{isa:?} {what}: {got:?} vs {want}")
    };
    // nn: c = a·b, then accumulated once more.
    let k = 7;
    let a: Vec<A> = values(k * mr, 1).into_iter().map(A::from_f64).collect();
    let ldb = nr + 3;
    let b: Vec<A> = values(k * ldb, 2).into_iter().map(A::from_f64).collect();
    let ldc = nr + 1;
    let mut c = vec![A::ZERO; mr * ldc];
    ks.nn((mr, nr), k, AOperand::Packed(&a), &b, ldb, &mut c, ldc, false);
    ks.nn((mr, nr), k, AOperand::Packed(&a), &b, ldb, &mut c, ldc, true);
    for i in 0..mr {
        for j in 0..nr {
            let want: f64 = (0..k).map(|kk| a[kk * mr + i].to_f64() * b[kk * ldb + j].to_f64()).sum();
            close(c[i * ldc + j], 2.0 * want, "nn");
        }
    }
    // The same `a` read in place from rows (after 2 other values each): the same sums, bit for bit.
    let a_rows: Vec<Vec<A>> =
        (0..mr).map(|i| [A::ONE, A::ONE].into_iter().chain((0..k).map(|kk| a[kk * mr + i])).collect()).collect();
    let mut rows = RowSet::new();
    a_rows.iter().for_each(|row| rows.push(row));
    let mut in_place = vec![A::ZERO; mr * ldc];
    ks.nn((mr, nr), k, AOperand::Rows(&rows, 2), &b, ldb, &mut in_place, ldc, false);
    ks.nn((mr, nr), k, AOperand::Rows(&rows, 2), &b, ldb, &mut in_place, ldc, true);
    assert!(c.iter().zip(&in_place).all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits()), "{isa:?} nn rows");
    // And as runs `lda` apart, the last only as long as the rows computed: the same sums, bit for bit.
    let lda = mr + 3;
    for rows in [mr, 1] {
        let height = ks.nn_height(rows);
        let runs: Vec<A> = (0..(k - 1) * lda + height).map(|at| a[at / lda * mr + (at % lda).min(mr - 1)]).collect();
        let mut strided = vec![A::ZERO; mr * ldc];
        ks.nn((rows, nr), k, AOperand::Strided(&runs, lda), &b, ldb, &mut strided, ldc, false);
        ks.nn((rows, nr), k, AOperand::Strided(&runs, lda), &b, ldb, &mut strided, ldc, true);
        let same = (0..rows * ldc).all(|at| strided[at].to_f64().to_bits() == c[at].to_f64().to_bits());
        assert!(same, "{isa:?} nn strided, {rows} rows");
    }
    // Edge tiles: the first `rows` rows and `cols` columns, bit for bit; past
    // the kernel's height and width, nothing written.
    let mut full = vec![A::ZERO; mr * ldc];
    ks.nn((mr, nr), k, AOperand::Packed(&a), &b, ldb, &mut full, ldc, false);
    for (rows, cols) in (1..=mr).flat_map(|rows| [1, ks.lanes, ks.lanes + 1, nr].map(|cols| (rows, cols))) {
        let (wide, _, height) = ks.nn_kernel(rows, cols);
        let width = if wide == 1 { nr } else { ks.lanes };
        assert!(height >= rows && height <= mr && width >= cols, "{isa:?}: {height}×{width} for {rows}×{cols}");
        let mut edge = vec![A::from_f64(f64::NAN); mr * ldc];
        ks.nn((rows, cols), k, AOperand::Packed(&a), &b, ldb, &mut edge, ldc, false);
        for (i, (got, want)) in edge.chunks(ldc).zip(full.chunks(ldc)).enumerate() {
            for (j, (x, y)) in got[..nr].iter().zip(&want[..nr]).enumerate() {
                if i < rows && j < cols {
                    assert_eq!(x.to_f64().to_bits(), y.to_f64().to_bits(), "{isa:?} {rows}×{cols}: ({i}, {j})");
                } else if i >= height || j >= width {
                    assert!(x.to_f64().is_nan(), "{isa:?} {rows}×{cols} wrote ({i}, {j})");
                }
            }
        }
    }
    // nt
    let (mr, nr, k) = (ks.nt_rows, ks.nt_cols, 7 * ks.lanes);
    let lda = k + 2;
    let a: Vec<A> = values(mr * lda, 3).into_iter().map(A::from_f64).collect();
    let b: Vec<A> = values(nr * lda, 4).into_iter().map(A::from_f64).collect();
    let mut c = vec![A::ONE; mr * nr];
    ks.nt(k, &a, lda, &b, lda, &mut c, nr);
    for i in 0..mr {
        for j in 0..nr {
            let want: f64 = (0..k).map(|r| a[i * lda + r].to_f64() * b[j * lda + r].to_f64()).sum();
            close(c[i * nr + j], 1.0 + want, "nt");
        }
    }
    // rows, with lengths around the vector and unrolled widths
    for n in [0, 1, ks.lanes - 1, ks.lanes, 4 * ks.lanes + 3, 37] {
        let x: Vec<A> = values(n, 5).into_iter().map(A::from_f64).collect();
        close(ks.sum(&x), x.iter().map(|a| a.to_f64()).sum(), "sum");
    }
}

fn check_rows<A: Copy + 'static + crate::element::Accumulator>(isa: CpuIsa, ks: Kernels<A>) {
    let data: Vec<A> = values(400, 7).into_iter().map(A::from_f64).collect();
    for taps in [1, 3, 9, 12] {
        let weights: Vec<A> = values(7 * taps, 8).into_iter().map(A::from_f64).collect();
        let mut src = RowSet::new();
        for t in 0..taps {
            src.push(&data[t * 5..]);
        }
        for len in [ks.lanes, 5 * ks.lanes, 9 * ks.lanes] {
            // Every block width and remainder: 1..=7 outputs, rows `ldo` apart, read from `offset`.
            for outputs in 1..=7 {
                let (offset, ldo) = (3, len + 2);
                let mut out = vec![A::ONE; outputs * ldo];
                ks.taps(&src, offset, &weights[..outputs * taps], &mut out, ldo, len);
                for o in 0..outputs {
                    for i in 0..len {
                        let want = (0..taps)
                            .map(|t| weights[o * taps + t].to_f64() * data[t * 5 + offset + i].to_f64())
                            .sum::<f64>();
                        let got = out[o * ldo + i].to_f64();
                        assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "taps {isa:?} {outputs} {o} {i}");
                    }
                    assert!(out[o * ldo + len..][..2].iter().all(|v| v.to_f64() == 1.0), "taps wrote between rows");
                }
            }
            let src: Vec<&[A]> = (0..taps).map(|t| &data[t * 5..]).collect();
            let (n, rows, lda, ldb) = (len / 3 + 1, 3, len / 3 + 2, len / 3 + 4);
            let mut dots = vec![A::ONE; taps];
            ks.dots(n, rows, &data, lda, &src, ldb, &mut dots);
            for (t, &d) in dots.iter().enumerate() {
                let want = 1.0
                    + (0..rows)
                        .flat_map(|r| (0..n).map(move |i| (r, i)))
                        .map(|(r, i)| data[r * lda + i].to_f64() * src[t][r * ldb + i].to_f64())
                        .sum::<f64>();
                assert!((d.to_f64() - want).abs() < 1e-4 * (1.0 + want.abs()), "dots {isa:?}");
            }
        }
    }
}

/// `row_taps` against a plain loop: grids of one and two slabs, gapped
/// columns, one and two sources, row counts around the block height and
/// widths around the vector, stored exactly `width` values per row.
fn check_row_taps<A: Copy + 'static + crate::element::Accumulator>(isa: CpuIsa, ks: Kernels<A>) {
    let pitch = 5 * ks.lanes + 3;
    let data: Vec<A> = values(40 * pitch, 9).into_iter().map(A::from_f64).collect();
    let grids = [
        TapGrid { slabs: vec![0], tap_rows: 3, columns: vec![0, 1, 2], pitch },
        TapGrid { slabs: vec![0, 7 * pitch + 1], tap_rows: 2, columns: vec![4, 0], pitch },
        TapGrid { slabs: vec![2], tap_rows: 1, columns: vec![3], pitch },
    ];
    for grid in &grids {
        for channels in [1, 2] {
            let weights: Vec<A> = values(channels * grid.taps(), 10).into_iter().map(A::from_f64).collect();
            let mut sources = RowSet::new();
            for c in 0..channels {
                sources.push(&data[c * 3 * pitch + c..]);
            }
            for rows in [1, 3, 5, 9] {
                for width in [1, ks.lanes - 1, ks.lanes, 2 * ks.lanes + 3, 4 * ks.lanes + 1] {
                    let ldo = width + 2;
                    let mut out = vec![A::ONE; rows * ldo];
                    ks.row_taps(grid, &sources, &weights, rows, width, &mut out, ldo);
                    for m in 0..rows {
                        for i in 0..width {
                            let mut want = 0.0;
                            let mut t = 0;
                            for c in 0..channels {
                                for &slab in &grid.slabs {
                                    for r in 0..grid.tap_rows {
                                        for &column in &grid.columns {
                                            let at = c * 3 * pitch + c + slab + (m + r) * pitch + column + i;
                                            want += weights[t].to_f64() * data[at].to_f64();
                                            t += 1;
                                        }
                                    }
                                }
                            }
                            let got = out[m * ldo + i].to_f64();
                            assert!(
                                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "row_taps {isa:?} {grid:?} {m} {i}"
                            );
                        }
                        let gap = &out[m * ldo + width..][..2];
                        assert!(gap.iter().all(|v| v.to_f64() == 1.0), "row_taps {isa:?} wrote past a row's width");
                    }
                }
            }
        }
    }
}

/// `row_taps_in_place` against a plain loop that reads zeros outside the
/// planes: 3×3 grids (the kernel with weights in registers) and others, taps
/// that hang over every edge or reach past the plane entirely, one and two
/// planes, widths and heights around the vector and the block height. Each
/// plane is a slice of its exact size, so a read outside it would fail the
/// run (the planes sit between guard values the loop never sees either).
fn check_row_taps_in_place<A: Copy + 'static + crate::element::Accumulator>(isa: CpuIsa, ks: Kernels<A>) {
    let grids: [(isize, usize, &[isize]); 5] =
        [(-1, 3, &[-1, 0, 1]), (0, 3, &[0, 1, 2]), (-2, 3, &[-3, -2, -1]), (-1, 2, &[-2, 2]), (1, 1, &[5])];
    for (first_row, tap_rows, columns) in grids {
        for planes in [1, 2] {
            for (height, plane_width) in [(1, 1), (4, ks.lanes - 1), (7, ks.lanes), (5, 2 * ks.lanes + 3), (9, 3)] {
                let len = height * plane_width;
                let data: Vec<A> = values(planes * (len + 2), 9).into_iter().map(A::from_f64).collect();
                let taps = tap_rows * columns.len();
                let weights: Vec<A> = values(planes * taps, 10).into_iter().map(A::from_f64).collect();
                let terms: Vec<(&[A], &[A])> =
                    (0..planes).map(|p| (&data[p * (len + 2) + 1..][..len], &weights[p * taps..][..taps])).collect();
                for rows in [1, 3, 5, height + 2] {
                    for width in [1, plane_width, plane_width + ks.lanes + 1] {
                        let ldo = width + 2;
                        let mut out = vec![A::ONE; rows * ldo];
                        let grid = (first_row, tap_rows);
                        ks.row_taps_in_place(
                            &terms,
                            [height, plane_width],
                            grid,
                            columns,
                            (rows, width),
                            &mut out,
                            ldo,
                        );
                        for m in 0..rows {
                            for i in 0..width {
                                let mut want = 0.0;
                                for (plane, weights) in &terms {
                                    for r in 0..tap_rows {
                                        for (j, &column) in columns.iter().enumerate() {
                                            let (y, x) = ((m + r) as isize + first_row, i as isize + column);
                                            if (0..height as isize).contains(&y)
                                                && (0..plane_width as isize).contains(&x)
                                            {
                                                let at = y as usize * plane_width + x as usize;
                                                want += weights[r * columns.len() + j].to_f64() * plane[at].to_f64();
                                            }
                                        }
                                    }
                                }
                                let got = out[m * ldo + i].to_f64();
                                assert!(
                                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                                    "row_taps_in_place {isa:?} {columns:?} {height}x{plane_width} at ({m}, {i}): {got} != {want}"
                                );
                            }
                            let gap = &out[m * ldo + width..][..2];
                            assert!(
                                gap.iter().all(|v| v.to_f64() == 1.0),
                                "row_taps_in_place {isa:?} wrote past a row"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `winograd_input_row` against the transform written out in scalars (the
/// same operations in the same order: equal to the bit): a row of tiles
/// that hangs over both ends of its rows, rows `2·width` apart with one in
/// the padding, a last register part full; then 1-D tiles. Nothing is
/// written past a point's `len` tiles.
fn check_input_row<A: Copy + 'static + crate::element::Accumulator>(isa: CpuIsa, ks: Kernels<A>) {
    let width = 37;
    let src: Vec<A> = values(8 * width, 5).into_iter().map(A::from_f64).collect();
    for (rows, mask) in [(4, 0b1011), (1, 0b1)] {
        let shape = TileRowShape { rows, row_gap: 2 * width, width };
        let (len, point_gap) = (19, 22);
        let row = TileRow { first: width as isize - 1, column: -1, rows: mask, len };
        let mut out = vec![A::from_f64(f64::NAN); 4 * rows * point_gap];
        ks.winograd_input_row(&src, &shape, &row, &mut out, point_gap);
        let bt = |[a, b, c, d]: [A; 4]| [a - c, b + c, c - b, b - d];
        for j in 0..len {
            let point = |u1: usize, u2: usize| {
                let column = 2 * j as isize - 1 + u2 as isize;
                let inside = mask & (1 << u1) != 0 && (0..width as isize).contains(&column);
                if inside { src[width + u1 * 2 * width + column as usize] } else { A::ZERO }
            };
            let mut p: Vec<[A; 4]> = (0..rows).map(|u1| std::array::from_fn(|u2| point(u1, u2))).collect();
            if rows == 4 {
                let columns: Vec<[A; 4]> = (0..4).map(|u2| bt(std::array::from_fn(|u1| p[u1][u2]))).collect();
                p = (0..4).map(|u1| std::array::from_fn(|u2| columns[u2][u1])).collect();
            }
            for (u1, &p) in p.iter().enumerate() {
                for (u2, want) in bt(p).into_iter().enumerate() {
                    let got = out[(4 * u1 + u2) * point_gap + j];
                    assert_eq!(
                        got.to_f64().to_bits(),
                        want.to_f64().to_bits(),
                        "{isa:?} point ({u1}, {u2}) of tile {j}"
                    );
                }
            }
        }
        let untouched =
            (0..4 * rows).all(|xi| out[xi * point_gap + len..][..point_gap - len].iter().all(|v| v.to_f64().is_nan()));
        assert!(untouched, "{isa:?}: written past the tiles");
    }
}

#[test]
fn every_supported_isa_computes_the_row_kernels() {
    for isa in CpuIsa::supported() {
        check_rows::<f32>(isa, kernels(isa).unwrap());
        check_rows::<f64>(isa, kernels(isa).unwrap());
        check_row_taps::<f32>(isa, kernels(isa).unwrap());
        check_row_taps::<f64>(isa, kernels(isa).unwrap());
        check_row_taps_in_place::<f32>(isa, kernels(isa).unwrap());
        check_row_taps_in_place::<f64>(isa, kernels(isa).unwrap());
        check_input_row::<f32>(isa, kernels(isa).unwrap());
        check_input_row::<f64>(isa, kernels(isa).unwrap());
    }
}

#[test]
fn every_isa_shape_computes_the_kernels_in_plain_rust() {
    for isa in CpuIsa::ALL {
        check_rows::<f32>(isa, kernels_shaped_as(isa).unwrap());
        check_rows::<f64>(isa, kernels_shaped_as(isa).unwrap());
        check_row_taps::<f32>(isa, kernels_shaped_as(isa).unwrap());
        check_row_taps::<f64>(isa, kernels_shaped_as(isa).unwrap());
        check_row_taps_in_place::<f32>(isa, kernels_shaped_as(isa).unwrap());
        check_row_taps_in_place::<f64>(isa, kernels_shaped_as(isa).unwrap());
        check_input_row::<f32>(isa, kernels_shaped_as(isa).unwrap());
        check_input_row::<f64>(isa, kernels_shaped_as(isa).unwrap());
        check_isa::<f32>(isa, kernels_shaped_as(isa).unwrap());
        check_isa::<f64>(isa, kernels_shaped_as(isa).unwrap());
    }
    let (avx512, avx2) =
        (kernels_shaped_as::<f32>(CpuIsa::Avx512).unwrap(), kernels_shaped_as::<f32>(CpuIsa::Avx2).unwrap());
    assert_eq!((avx512.lanes, avx512.nn_rows, avx512.nn_cols, avx512.nt_rows, avx512.nt_cols), (16, 12, 32, 4, 4));
    assert_eq!((avx2.lanes, avx2.nn_rows, avx2.nn_cols, avx2.nt_rows, avx2.nt_cols), (8, 6, 16, 3, 4));
    assert!(avx512.pairs.is_some_and(|p| p.rows == 12 && p.cols == 32) && avx2.pairs.is_none());
}

#[test]
fn every_supported_isa_computes_the_kernels_exactly_enough() {
    for isa in CpuIsa::supported() {
        check_isa::<f32>(isa, kernels(isa).unwrap());
        check_isa::<f64>(isa, kernels(isa).unwrap());
    }
}

#[test]
fn unsupported_accumulators_have_no_kernels() {
    assert!(kernels::<u8>(CpuIsa::Portable).is_none());
}
