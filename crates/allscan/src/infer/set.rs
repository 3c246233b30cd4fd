//! A set of fields predicted together (a dataset source, the files of one `predict` call, an
//! upload): fields whose own red-cell scale fell back to Assumed are predicted again at the
//! set's pooled scale ([`ScalePool`]), streamed in chunks so the set is never all in memory.

use allscan_preprocess::{ScaleEstimate, ScalePool};
use image::RgbImage;

use super::*;

impl Predictor {
    /// Predicts decoded fields: every view of every field goes through batched forward passes
    /// (views of different fields share batches). The fields are one set: those whose own
    /// scale fell back to Assumed are predicted again at the set's pooled scale (see
    /// [`Self::predict_set`]). One result per field, in order; a field whose views cannot be
    /// built gets its error in place.
    pub fn predict_fields(&self, fields: &[&RgbImage]) -> Vec<Result<FieldPrediction, InferError>> {
        let mut out = self.predict_fields_at(fields, &[]);
        let again = self.to_pool(&out);
        if !again.is_empty() {
            let refs: Vec<&RgbImage> = again.iter().map(|(i, _)| fields[*i]).collect();
            let scales: Vec<Option<ScaleEstimate>> = again.iter().map(|(_, s)| Some(s.clone())).collect();
            for ((i, _), r) in again.iter().zip(self.predict_fields_at(&refs, &scales)) {
                out[*i] = r;
            }
        }
        out
    }

    /// The fields of a predicted set to predict again at the set's pooled scale: `(index,
    /// resolved scale)` of those whose own scale fell back to Assumed. The set is split by
    /// image size first (one camera, one size: a dataset source may hold two labs' crops);
    /// a group without a pooled scale ([`ScalePool::pooled`]) keeps its own estimates.
    fn to_pool<E>(&self, results: &[Result<FieldPrediction, E>]) -> Vec<(usize, ScaleEstimate)> {
        let items: Vec<Option<((u32, u32), &ScaleEstimate)>> = results
            .iter()
            .map(|r| r.as_ref().ok().and_then(|fp| fp.scale.as_ref().map(|s| ((fp.width, fp.height), s))))
            .collect();
        ScalePool::regroup(&items, &self.preprocess.cell.scale)
    }

    /// Predicts a set of `n` fields from one instrument (a dataset source, the files given to
    /// `predict`), `chunk` at a time: `load(i)` decodes field `i` and says its given scale, if
    /// any. Fields whose own scale fell back to Assumed are predicted again at the set's pooled
    /// scale ([`ScalePool`]; loaded twice, never all held in memory). `tick` counts first-pass
    /// fields. One result per field, in order; an error is the reason as text.
    pub fn predict_set(
        &self,
        n: usize,
        chunk: usize,
        load: &dyn Fn(usize) -> Result<(RgbImage, Option<f32>), String>,
        tick: &dyn Fn(u64),
    ) -> Vec<Result<FieldPrediction, String>> {
        let mut out: Vec<Result<FieldPrediction, String>> = Vec::with_capacity(n);
        let ids: Vec<usize> = (0..n).collect();
        for part in ids.chunks(chunk.max(1)) {
            out.extend(self.predict_loaded(part, load, |_| None));
            tick(part.len() as u64);
        }
        let again = self.to_pool(&out);
        for part in again.chunks(chunk.max(1)) {
            let ids: Vec<usize> = part.iter().map(|(i, _)| *i).collect();
            let redone = self.predict_loaded(&ids, load, |k| Some(part[k].1.clone()));
            for (&i, r) in ids.iter().zip(redone) {
                out[i] = r;
            }
        }
        out
    }

    /// Loads and predicts the fields `ids`; `scale(k)` overrides the `k`-th one's scale.
    fn predict_loaded(
        &self,
        ids: &[usize],
        load: &dyn Fn(usize) -> Result<(RgbImage, Option<f32>), String>,
        scale: impl Fn(usize) -> Option<ScaleEstimate>,
    ) -> Vec<Result<FieldPrediction, String>> {
        let loaded: Vec<Result<(RgbImage, Option<f32>), String>> = ids.iter().map(|&i| load(i)).collect();
        let refs: Vec<&RgbImage> = loaded.iter().flatten().map(|(img, _)| img).collect();
        let scales: Vec<Option<ScaleEstimate>> = loaded
            .iter()
            .enumerate()
            .filter_map(|(k, r)| r.as_ref().ok().map(|(_, given)| scale(k).or_else(|| given.map(ScaleEstimate::given))))
            .collect();
        let mut predicted = self.predict_fields_at(&refs, &scales).into_iter();
        loaded
            .into_iter()
            .map(|r| match r {
                Ok(_) => predicted
                    .next()
                    .unwrap_or_else(|| Err(InferError::Output("no result".into())))
                    .map_err(|e| e.to_string()),
                Err(why) => Err(why),
            })
            .collect()
    }
}
