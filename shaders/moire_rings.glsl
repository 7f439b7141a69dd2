// Moire: two or three sets of concentric rings whose product beats into moire fringes.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float f = 10.0 + 40.0 * P0.x;
    vec2 c1 = (P0.yz - 0.5) * 1.5;
    vec2 c2 = (P2.xy - 0.5) * 1.5 + 0.05 * vec2(sin(iTime * 0.3), cos(iTime * 0.2));
    vec2 c3 = (P2.zw - 0.5) * 2.0;
    float a = 0.5 + 0.5 * cos(length(uv - c1) * f);
    float b = 0.5 + 0.5 * cos(length(uv - c2) * f * (0.9 + 0.2 * P0.w));
    float c = P3.x > 0.5 ? 0.5 + 0.5 * cos(length(uv - c3) * f * 1.1) : 1.0;
    float v = a * b * c;
    fragColor = vec4(ramp3(v, P1), 1.0);
}
